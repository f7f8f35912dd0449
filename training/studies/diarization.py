"""How well `magtkd-stream run` tells speakers apart: attribution and diarization error rate on real speech.

Conversations with known turns are composed from LibriSpeech speakers:
the dev set from speakers/librispeech_one_each (126 speakers, each clip cut
into three turns), the test set from speakers/librispeech_multi (10 other
speakers, ten clips each). The diarizer's threshold is swept on dev over the
utterance embeddings alone (same clustering code as the service), and on
composed emotion dev conversations (--composed: acted voices change more
within one speaker than read speech does); the test
conversations and the AMI meeting fixtures (real meetings, overlapping
speech, RTTM truth) then go through the product, and the speaker labels of
its transcript events are scored: attribution per turn (labels matched one
to one) and diarization error rate (pyannote.metrics, 0.25 s collar).

    magtkd-train diarization --data ../shared/data --out runs/diarization --composed runs/dev-compose
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from magtkd_stream.config import DiarizeConfig
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.streaming.diarize import OnlineDiarizer, SpeakerEmbedder, change_point
from training.devset.speakers import attribution_summary

log = logging.getLogger(__name__)

GAP_S = 0.8  # silence between turns: well above the VAD's end-of-speech hangover
THRESHOLDS = (0.6, 0.65, 0.7, 0.75, 0.8)
COLLAR_S = 0.25
AMI_FILES = {"dev": ("dev00", "dev01"), "test": ("tst00", "tst01")}


@dataclass
class Turn:
    speaker: str
    audio: np.ndarray
    start: float = 0.0
    end: float = 0.0


def _read(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32")
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: {rate} Hz; the speaker clips are {SAMPLE_RATE} Hz")
    return audio if audio.ndim == 1 else audio.mean(axis=1)


def clips_by_speaker(folder: Path, pieces: int = 1) -> dict[str, list[np.ndarray]]:
    """speaker -> turns: each clip whole, or cut into `pieces` equal parts (one clip per speaker)."""
    out: dict[str, list[np.ndarray]] = {}
    for f in sorted(folder.glob("*.flac")):
        audio = _read(f)
        parts = np.array_split(audio, pieces) if pieces > 1 else [audio]
        out.setdefault(f.name.split("-")[0], []).extend(p for p in parts if p.size >= SAMPLE_RATE)
    return out


def compose(clips: dict[str, list[np.ndarray]], conversations: int, speakers: int, turns_each: int,
            seed: int) -> list[list[Turn]]:
    """Conversations of `speakers` people, `turns_each` turns each, shuffled so no one speaks twice in a row."""
    rng = np.random.default_rng(seed)
    names = sorted(n for n, c in clips.items() if len(c) >= turns_each)
    out = []
    for _ in range(conversations):
        chosen = list(rng.choice(names, size=speakers, replace=False))
        queue = {s: [clips[s][i] for i in rng.permutation(len(clips[s]))[:turns_each]] for s in chosen}
        convo: list[Turn] = []
        while any(queue.values()):  # the one with most turns left first (ties at random): no one runs out last
            options = [s for s in chosen if queue[s] and (not convo or convo[-1].speaker != s)] or \
                      [s for s in chosen if queue[s]]
            most = max(len(queue[s]) for s in options)
            options = [s for s in options if len(queue[s]) == most]
            s = options[int(rng.integers(len(options)))]
            convo.append(Turn(s, queue[s].pop()))
        out.append(convo)
    return out


def render(convo: list[Turn], path: Path) -> None:
    """One 16 kHz wav with GAP_S of silence between turns; each turn's start/end set."""
    import soundfile as sf

    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
    parts, t = [gap], GAP_S
    for turn in convo:
        turn.start, turn.end = t, t + turn.audio.size / SAMPLE_RATE
        parts += [turn.audio, gap]
        t = turn.end + GAP_S
    sf.write(str(path), np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")


def composed_turns(folder: Path) -> list[list[Turn]]:
    """The utterances of a `magtkd-train compose` folder as turns (audio cut at the script's times)."""
    from magtkd_stream.media import MediaSpan, load_audio

    out = []
    for script in sorted(folder.glob("conv-*.json")):
        doc = json.loads(script.read_text(encoding="utf-8"))
        audio = load_audio(MediaSpan(str(folder / doc["media"])), sr=SAMPLE_RATE)
        out.append([Turn(u["speaker"], audio[int(u["start"] * SAMPLE_RATE) : int(u["end"] * SAMPLE_RATE)],
                         float(u["start"]), float(u["end"])) for u in doc["utterances"]])
    return out


def sweep(convos: Sequence[list[Turn]], embedder: SpeakerEmbedder,
          thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Attribution per threshold, the diarizer run over each turn's audio in order (no VAD, no ASR)."""
    embeddings = [[embedder(t.audio) for t in c] for c in convos]

    class Cached:
        def __init__(self, vectors: list[np.ndarray]) -> None:
            self.vectors = iter(vectors)

        def __call__(self, audio: np.ndarray) -> np.ndarray:
            return next(self.vectors)

    out = {}
    for th in thresholds:
        pairs = {}
        for k, (c, embs) in enumerate(zip(convos, embeddings)):
            d = OnlineDiarizer(DiarizeConfig(enabled=True, threshold=th), Cached(embs))  # type: ignore[arg-type]
            pairs[str(k)] = [(t.speaker, d.assign(t.audio)) for t in c]
        out[str(th)] = attribution_summary(pairs)
    return out


SPLIT_THRESHOLDS = (0.55, 0.6, 0.65, 0.7, 0.75)


def split_sweep(clips: dict[str, list[np.ndarray]], embedder: SpeakerEmbedder, pairs: int = 40,
                seconds: float = 4.0, composed: Sequence[list[Turn]] = (), min_s: float = 3.0,
                thresholds: Sequence[float] = SPLIT_THRESHOLDS) -> dict[str, Any]:
    """How often a change of voice inside one segment is found, and a single voice is cut, per split threshold.

    Changes: `pairs` segments made of `seconds` of one speaker then `seconds` of another, no pause. Single
    voices: 2 x `seconds` of one speaker, and every composed utterance of at least `min_s` (one actor or
    espeak-ng voice each). Counted for a session that has heard no one yet (no known speaker to match).
    """
    n = int(seconds * SAMPLE_RATE)
    long = {s: c[0] for s, c in clips.items() if c and c[0].size >= 2 * n}
    names = sorted(long)
    changes = [np.concatenate([long[a][:n], long[b][:n]])
               for a, b in zip(names[:pairs], names[1:pairs + 1])]
    single = [long[s][: 2 * n] for s in names[:pairs]]
    acted = [t.audio for c in composed for t in c if t.audio.size >= min_s * SAMPLE_RATE]
    sims = {name: [change_point(embedder.partials(a)[0])[1] for a in group]
            for name, group in (("change", changes), ("single", single), ("composed_single", acted))}
    return {"segments": {k: len(v) for k, v in sims.items()},
            "per_threshold": {str(th): {"changes_found": _share([s < th for s in sims["change"]]),
                                        "single_voices_cut": _share([s < th for s in sims["single"]]),
                                        "composed_utterances_cut": _share([s < th for s in sims["composed_single"]])}
                              for th in thresholds}}


def _share(hits: Sequence[bool]) -> Optional[float]:
    return round(sum(hits) / len(hits), 4) if hits else None


def _annotation(segments: Sequence[tuple[float, float, str]]) -> Any:
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for k, (start, end, label) in enumerate(segments):
        if end > start:
            ann[Segment(start, end), k] = label
    return ann


def der(truth: Sequence[tuple[float, float, str]], hyp: Sequence[tuple[float, float, str]],
        uem: Optional[tuple[float, float]] = None) -> dict[str, float]:
    """Diarization error rate (and its parts, in seconds) of `hyp` against `truth`, 0.25 s collar."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=COLLAR_S)
    extent = None if uem is None else Timeline([Segment(*uem)])
    parts = metric(_annotation(truth), _annotation(hyp), uem=extent, detailed=True)
    return {k: round(float(parts[k]), 3) for k in ("diarization error rate", "total", "missed detection",
                                                  "false alarm", "confusion")}


def hypothesis(events_file: Path) -> list[tuple[float, float, str]]:
    """(start, end, speaker) of each transcript event the product wrote."""
    out = []
    for line in events_file.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        if e.get("type") == "transcript" and e.get("speaker") is not None:
            out.append((float(e["start"]), float(e["end"]), str(e["speaker"])))
    return out


def turn_pairs(convo: Sequence[Turn], hyp: Sequence[tuple[float, float, str]]) -> list[tuple[str, str]]:
    """(true speaker, label of the utterance overlapping the turn most) for each turn the product heard."""
    pairs = []
    for t in convo:
        overlaps = [(min(t.end, e) - max(t.start, s), label) for s, e, label in hyp]
        best = max(overlaps, default=(0.0, ""))
        if best[0] > 0:
            pairs.append((t.speaker, best[1]))
    return pairs


def read_rttm(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    out: dict[str, list[tuple[float, float, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            start, dur = float(f[3]), float(f[4])
            out.setdefault(f[1], []).append((start, start + dur, f[7]))
    return out


def read_uem(path: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) == 4:
            out[f[0]] = (float(f[2]), float(f[3]))
    return out


def diarization_study(data: Path, out: Path, overrides: Sequence[str] = (), config: str = "lite",
                      conversations: int = 12, seed: int = 0,
                      composed: Sequence[Path] = (), split_only: bool = False) -> dict[str, Any]:
    """The whole study (module docstring); `composed`: emotion dev folders swept as well (acted voices vary more).

    split_only: only the sweep of the split threshold (seconds, no product runs).
    """
    from training.devset.score_dev import run_product

    speakers = data / "speakers"
    ami = data / "diarization" / "ami_fixtures"
    for need in (speakers / "librispeech_one_each", speakers / "librispeech_multi", ami):
        if not need.is_dir():
            raise FileNotFoundError(f"{need} not found (the shared data's speakers/ and diarization/ folders)")
    out.mkdir(parents=True, exist_ok=True)
    embedder = SpeakerEmbedder()
    report: dict[str, Any] = {"config": config, "overrides": list(overrides), "collar_s": COLLAR_S}

    report["split_sweep"] = split_sweep(clips_by_speaker(speakers / "librispeech_one_each"), embedder,
                                        composed=[t for f in composed for t in composed_turns(f)])
    log.info("split sweep: %s", report["split_sweep"]["per_threshold"])
    if split_only:
        (out / "diarization.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return report
    dev = compose(clips_by_speaker(speakers / "librispeech_one_each", pieces=3), conversations, 3, 3, seed)
    report["dev_sweep"] = sweep(dev, embedder)
    for folder in composed:
        report[f"composed_sweep:{folder.name}"] = sweep(composed_turns(folder), embedder)
    best = max(report["dev_sweep"].items(), key=lambda kv: (kv[1]["accuracy"], -abs(float(kv[0]) - 0.75)))
    report["dev_best_threshold"] = float(best[0])  # on LibriSpeech alone; the default weighs dev A too
    log.info("dev sweep: %s", {k: v["accuracy"] for k, v in report["dev_sweep"].items()})

    test = compose(clips_by_speaker(speakers / "librispeech_multi"), conversations, 3, 4, seed + 1)
    media = out / "librispeech_test"
    media.mkdir(exist_ok=True)
    for k, convo in enumerate(test):
        render(convo, media / f"conv-{k:03d}.wav")
    for t in test[0][:2]:  # warm-up, not timed
        embedder(t.audio)
    t0 = time.perf_counter()
    seconds = 0.0
    for c in test:
        for t in c:
            embedder(t.audio)
            seconds += t.audio.size / SAMPLE_RATE
    n = sum(len(c) for c in test)
    spent = time.perf_counter() - t0
    report["embedding_ms_per_utterance"] = round(spent / n * 1e3, 1)
    report["embedding_ms_per_speech_s"] = round(spent / seconds * 1e3, 1)

    events = out / "events"
    run_product(sorted(media.glob("conv-*.wav")), events, config, overrides)
    pairs, ders = {}, []
    for k, convo in enumerate(test):
        hyp = hypothesis(events / f"conv-{k:03d}.jsonl")
        pairs[str(k)] = turn_pairs(convo, hyp)
        ders.append(der([(t.start, t.end, t.speaker) for t in convo], hyp))
    report["librispeech_test"] = {"attribution": attribution_summary(pairs), "der": _pool(ders)}

    truth, uem = read_rttm(ami / "debug.development.rttm"), read_uem(ami / "debug.development.uem")
    truth.update(read_rttm(ami / "debug.test.rttm"))
    uem.update(read_uem(ami / "debug.test.uem"))
    run_product([ami / f"{name}.flac" for names in AMI_FILES.values() for name in names], events, config, overrides)
    for split, names in AMI_FILES.items():
        per_file = {name: der(truth[name], hypothesis(events / f"{name}.jsonl"), uem.get(name)) for name in names}
        report[f"ami_{split}"] = {"files": per_file, "der": _pool(list(per_file.values())),
                                  "true_speakers": {n: len({s for *_, s in truth[n]}) for n in names}}
    (out / "diarization.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _pool(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """DER over several files: summed error seconds over summed reference seconds."""
    total = sum(p["total"] for p in parts)
    errors = {k: sum(p[k] for p in parts) for k in ("missed detection", "false alarm", "confusion")}
    return {"der": round(sum(errors.values()) / total, 4) if total else 0.0, "reference_s": round(total, 1),
            **{k: round(v / total, 4) if total else 0.0 for k, v in errors.items()}}
