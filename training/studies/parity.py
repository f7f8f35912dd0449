"""Train/serve parity of the audio branch: the same clips through the training path and the streaming path.

A head is only as good as the agreement between the vectors it was trained on
and the vectors the service gives it. This joins clips into one stream with
silence between them (as a user's file would carry them), cuts the stream with
the service's own VAD and encodes every segment with the ASR's own encoder
pass, exactly as a live session does (no Ray: the same library objects). Each
clip is also encoded the way training encodes it, both the old way (the whole
clip, silence included) and the current way (the clip's VAD segment). It
reports, per path, the cosine similarity to the streamed vector and what a
checkpoint's audio head scores on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.streaming.asr import WhisperASR, is_audible, truncate
from magtkd_stream.config import Config
from magtkd_stream.model.fusion import FusionModel
from magtkd_stream.model.speaker_norm import normalize_sequence
from magtkd_stream.model.checkpoint import load_checkpoint
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.streaming.vad import VADSegmenter, served_audio
from training.metrics import compute_metrics

logger = logging.getLogger(__name__)

GAP_S = 1.0  # silence between clips in the joined stream


@dataclass
class ParityClip:
    """One clip: label index and its vector by path (None where that path found no speech)."""

    name: str
    label: int
    vectors: dict[str, Optional[np.ndarray]]
    speaker: str = "A"  # the session speaker it is heard as (per-speaker normalisation)


def stream_vectors(asr: WhisperASR, clips: Sequence[np.ndarray], vad_cfg: Any, vad_model: Any,
                   gap_s: float = GAP_S) -> list[Optional[np.ndarray]]:
    """Vectors the service computes for each clip of a joined stream; the segment overlapping it most."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    spans, parts, t = [], [gap], gap_s
    for c in clips:
        spans.append((t, t + c.size / SAMPLE_RATE))
        parts += [c, gap]
        t += c.size / SAMPLE_RATE + gap_s
    seg = VADSegmenter(vad_cfg, model=vad_model)
    stream = np.concatenate(parts)
    utts = []
    for i in range(0, stream.size, 320):  # 20 ms pushes, as a live client sends
        utts += seg.push(stream[i:i + 320])
    utts += seg.flush()
    best: list[Optional[tuple[float, int]]] = [None] * len(clips)
    for j, u in enumerate(utts):
        for i, (a, b) in enumerate(spans):
            ov = min(b, u.end_s) - max(a, u.start_s)
            if ov > 0 and (best[i] is None or ov > best[i][0]):
                best[i] = (ov, j)
    results = asr.transcribe_batch([u.audio for u in utts]) if utts else []
    return [None if b is None else results[b[1]].audio_vector for b in best]


def clip_vectors(asr: WhisperASR, waves: Sequence[np.ndarray], max_seconds: float) -> list[Optional[np.ndarray]]:
    """Vectors pooled over each whole waveform (None when it is silent), one clip at a time."""
    out: list[Optional[np.ndarray]] = []
    for w in waves:
        w = truncate(w, max_seconds)
        out.append(asr.audio_vectors([w])[0] if w.size and is_audible(w) else None)
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def parity_report(clips: Sequence[ParityClip], model: FusionModel, labels: Sequence[str]) -> dict[str, Any]:
    """Per path: clips with a vector, cosine to the streamed vector, and the audio head's scores."""
    report: dict[str, Any] = {}
    norm = model.speaker_norm.get("audio")
    for path in ("whole_clip", "vad_segment", "stream"):
        have = [c for c in clips if c.vectors.get(path) is not None]
        entry: dict[str, Any] = {"clips": len(have)}
        if have:
            rows = [c.vectors[path] for c in have]
            if norm is not None:  # as the service does: each speaker's clips in stream order
                rows = list(normalize_sequence(norm, np.stack(rows), [c.speaker for c in have]))
            x = torch.from_numpy(np.stack(rows).astype(np.float32))
            _, logits = model.head("audio", x)
            pred = logits.argmax(-1).numpy()
            m = compute_metrics(np.array([c.label for c in have]), pred, list(labels))
            entry.update(accuracy=round(m["accuracy"], 4), weighted_f1=round(m["weighted_f1"], 4),
                         macro_f1=round(m["macro_f1"], 4),
                         predicted=dict(zip(labels, np.bincount(pred, minlength=len(labels)).tolist())))
        both = [c for c in have if c.vectors.get("stream") is not None]
        if path != "stream" and both:
            cos = np.array([_cos(c.vectors[path], c.vectors["stream"]) for c in both])
            entry["cosine_to_stream"] = {"mean": round(float(cos.mean()), 4), "min": round(float(cos.min()), 4),
                                         "p10": round(float(np.percentile(cos, 10)), 4)}
        report[path] = entry
    return report


def encode_three_ways(cfg: Config, waves: Sequence[np.ndarray],
                      asr: Optional[WhisperASR] = None) -> list[dict[str, Optional[np.ndarray]]]:
    """Per clip, its vector along the whole-clip, VAD-segment and streaming paths (module docstring)."""
    from faster_whisper.vad import get_vad_model

    asr = asr or WhisperASR(cfg.encoders.asr)
    vad_cfg, vad_model = cfg.stream.vad, get_vad_model()
    logger.info("encoding %d clips three ways", len(waves))
    whole = clip_vectors(asr, waves, cfg.encoders.audio.max_seconds)
    cut = clip_vectors(asr, [served_audio(w, vad_cfg, vad_model) for w in waves], cfg.encoders.audio.max_seconds)
    streamed = stream_vectors(asr, waves, vad_cfg, vad_model)
    return [{"whole_clip": a, "vad_segment": b, "stream": c} for a, b, c in zip(whole, cut, streamed)]


def run_parity(ravdess_root: Path, cfg: Config, checkpoint: Path, actors: Sequence[int],
               seed: int = 0, limit: Optional[int] = None) -> dict[str, Any]:
    """Encode RAVDESS clips of `actors` three ways and score the checkpoint's audio head on each."""
    from magtkd_stream.media import MediaSpan, load_audio
    from training.data.ravdess import load_ravdess_speech

    ds = load_ravdess_speech(ravdess_root, train_actors=(), dev_actors=actors)
    utts = [d.utterances[0] for d in ds.splits["dev"]]
    order = np.random.default_rng(seed).permutation(len(utts))  # shuffled, as the joined file
    utts = [utts[i] for i in order][: limit or None]
    waves = [load_audio(MediaSpan(u.audio.path), sr=SAMPLE_RATE) for u in utts]
    ck = load_checkpoint(checkpoint, expect_labels=ds.labels)
    model = FusionModel.from_checkpoint(ck)
    clips = [ParityClip(Path(u.audio.path).stem, u.label, v) for u, v in zip(utts, encode_three_ways(cfg, waves))]
    report = parity_report(clips, model, ds.labels)
    report.update(checkpoint=str(checkpoint), actors=list(actors), seed=seed, n=len(clips))
    return report


def run_emodb(emodb_root: Path, cfg: Config, checkpoint: Path, seed: int = 0) -> dict[str, Any]:
    """The checkpoint's audio head on EmoDB (German, unseen speakers and corpus): reported, never selected on.

    Clips are shuffled and joined per speaker for the streaming path, as one
    speaker's file would reach the service. Boredom is scored as neutral.
    """
    from training.data.emodb import BOREDOM, EMODB_TO_MELD, emodb_clips
    from magtkd_stream.media import MediaSpan, load_audio

    ck = load_checkpoint(checkpoint)
    labels = list(ck.labels)
    model = FusionModel.from_checkpoint(ck)
    items = emodb_clips(emodb_root)
    rng = np.random.default_rng(seed)
    asr = WhisperASR(cfg.encoders.asr)
    clips: list[ParityClip] = []
    for speaker in sorted({c.speaker for c in items}):
        mine = [c for c in items if c.speaker == speaker]
        mine = [mine[i] for i in rng.permutation(len(mine))]
        waves = [load_audio(MediaSpan(str(c.path)), sr=SAMPLE_RATE) for c in mine]
        clips += [ParityClip(c.path.stem, labels.index(c.label), v, speaker)
                  for c, v in zip(mine, encode_three_ways(cfg, waves, asr))]
    report = parity_report(clips, model, labels)
    by_name = {c.path.stem: c.letter for c in items}
    no_boredom = [c for c in clips if by_name[c.name] != BOREDOM]
    report["without_boredom"] = parity_report(no_boredom, model, labels)
    report.update(checkpoint=str(checkpoint), n=len(clips), speakers=sorted({c.speaker for c in items}),
                  mapping=EMODB_TO_MELD, note="boredom (L) is scored as neutral; 'without_boredom' leaves it out")
    return report


def join_clips(ravdess_root: Path, actors: Sequence[int], out_dir: Path, seed: int = 0,
               gap_s: float = GAP_S) -> tuple[Path, Path]:
    """One 16 kHz WAV of the actors' clips, shuffled, `gap_s` of silence apart, and a JSON of each clip's span.

    This is how a user meets the audio branch: one file through `magtkd-stream run`.
    """
    import json
    import wave

    from magtkd_stream.media import MediaSpan, load_audio
    from training.data.ravdess import load_ravdess_speech

    ds = load_ravdess_speech(ravdess_root, train_actors=(), dev_actors=actors)
    utts = [d.utterances[0] for d in ds.splits["dev"]]
    utts = [utts[i] for i in np.random.default_rng(seed).permutation(len(utts))]
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    parts, spans, t = [gap], [], gap_s
    for u in utts:
        w = load_audio(MediaSpan(u.audio.path), sr=SAMPLE_RATE)
        spans.append({"clip": Path(u.audio.path).stem, "label": ds.labels[u.label], "start": round(t, 4),
                      "end": round(t + w.size / SAMPLE_RATE, 4)})
        parts += [w, gap]
        t += w.size / SAMPLE_RATE + gap_s
    out_dir.mkdir(parents=True, exist_ok=True)
    wav, script = out_dir / "ravdess_joined.wav", out_dir / "ravdess_joined.json"
    pcm = (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2")
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())
    script.write_text(json.dumps({"actors": list(actors), "seed": seed, "gap_s": gap_s, "clips": spans}, indent=1))
    return wav, script


def score_joined(events_path: Path, script_path: Path) -> dict[str, Any]:
    """Match `run`'s emotion events to the joined clips by time overlap; fused and per-modality accuracy."""
    import json

    clips = json.loads(script_path.read_text())["clips"]
    events = [json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
    events = [e for e in events if e.get("type") == "emotion" and e.get("status") == "ok"]
    best: list[Optional[tuple[float, dict]]] = [None] * len(clips)
    for e in events:
        ovs = [min(c["end"], e["end"]) - max(c["start"], e["start"]) for c in clips]
        i = int(np.argmax(ovs))
        if ovs[i] > 0 and (best[i] is None or ovs[i] > best[i][0]):
            best[i] = (ovs[i], e)
    matched = [(c, b[1]) for c, b in zip(clips, best) if b is not None]
    report: dict[str, Any] = {"clips": len(clips), "matched": len(matched), "events": len(events)}
    for name, get in (("fused", lambda e: e["label"]),
                      ("audio", lambda e: e["modalities"]["audio"]["label"] if e["modalities"]["audio"]["present"]
                       else None),
                      ("text", lambda e: e["modalities"]["text"]["label"] if e["modalities"]["text"]["present"]
                       else None)):
        pred = [get(e) for _, e in matched]
        right = sum(p == c["label"] for (c, _), p in zip(matched, pred))
        counts: dict[str, int] = {}
        for p in pred:
            counts[str(p)] = counts.get(str(p), 0) + 1
        report[name] = {"accuracy": round(right / max(1, len(matched)), 4), "predicted": counts}
    return report
