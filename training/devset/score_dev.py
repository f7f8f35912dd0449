"""Score the product on a composed dev set (training/devset/compose.py) the way a user runs it.

Why: per-modality benchmarks on features say little about the running service
(VAD cuts, ASR errors, face detection, the fusion window). This runs every
conversation through `magtkd-stream run --fast` in one invocation (one Ray
start), matches the emitted emotion events to the scripted utterances by media
time, and reports, per cue type (which modalities carry the emotion), what the
fused output and every single modality get right.

Matching: an event belongs to the utterance it overlaps most (by at least
MIN_OVERLAP_S). An event overlapping two or more utterances is a *merge*; an
utterance given two or more events is a *split* (scored with the event that
overlaps it most); an utterance given none is *missed* (wrong in the
"all utterances" accuracy, left out of the matched metrics); an event
overlapping no utterance is *spurious*.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from magtkd_stream.labels import MELD_LABELS
from magtkd_stream.names import MODALITIES
from training.devset.speakers import attribution_summary

log = logging.getLogger(__name__)

MIN_OVERLAP_S = 0.05
MODALITY_OF_CUE = {"text": "words", "audio": "voice", "video": "face"}  # event modality -> the cue it reads
CUE_TYPES = ("voice", "face", "words", "voice+face", "words+face", "none")


# ------------------------------------------------------------------ matching
def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


@dataclass
class Match:
    """One scripted utterance and the event scored for it (None: missed)."""

    utterance: Mapping[str, Any]
    event: Optional[Mapping[str, Any]]
    n_events: int = 0  # events assigned to it (>= 2: split)


@dataclass
class Matching:
    matches: list[Match]
    merges: int = 0
    spurious: int = 0
    failed: int = 0
    events: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def splits(self) -> int:
        return sum(m.n_events >= 2 for m in self.matches)

    @property
    def missed(self) -> int:
        return sum(m.event is None for m in self.matches)


def match_events(utterances: Sequence[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]) -> Matching:
    """Match final emotion events (status ok) to utterances by media-time overlap."""
    assigned: dict[int, list[tuple[float, Mapping[str, Any]]]] = {k: [] for k in range(len(utterances))}
    result = Matching([])
    for e in events:
        if e.get("type") != "emotion":
            continue
        if e.get("status") != "ok":
            result.failed += 1
            continue
        result.events += 1
        ov = [overlap(float(e["start"]), float(e["end"]), float(u["start"]), float(u["end"])) for u in utterances]
        touching = [k for k, o in enumerate(ov) if o >= MIN_OVERLAP_S]
        if not touching:
            result.spurious += 1
            result.details.append(f"spurious event {e['start']:.2f}-{e['end']:.2f}")
            continue
        if len(touching) >= 2:
            result.merges += 1
            result.details.append(f"merge: event {e['start']:.2f}-{e['end']:.2f} over utterances {touching}")
        best = max(touching, key=lambda k: ov[k])
        assigned[best].append((ov[best], e))
    for k, u in enumerate(utterances):
        got = assigned[k]
        event = max(got, key=lambda x: x[0])[1] if got else None
        result.matches.append(Match(u, event, len(got)))
    return result


# ------------------------------------------------------------------ metrics
def _acc(hits: Sequence[bool]) -> Optional[float]:
    return round(sum(hits) / len(hits), 4) if hits else None


def modality_label(event: Mapping[str, Any], modality: str) -> Optional[str]:
    """The modality's own label, None when the modality was absent."""
    entry = event["modalities"][modality]
    return entry.get("label") if entry.get("present") else None


def _fused_right(m: Match) -> bool:
    return m.event is not None and m.event["label"] == m.utterance["emotion"]


def _single_right(m: Match, modality: str) -> bool:
    """The modality's own label is the utterance's (an absent modality or a missed utterance is wrong)."""
    return m.event is not None and modality_label(m.event, modality) == m.utterance["emotion"]


def _present(m: Match, modality: str) -> bool:
    return m.event is not None and modality_label(m.event, modality) is not None


def _by_cue(rows: Sequence[Match]) -> dict[str, Any]:
    got = [x for x in rows if x.event is not None]
    entry: dict[str, Any] = {"n": len(rows), "matched": len(got),
                             "fused_accuracy": _acc([_fused_right(x) for x in got]),
                             "all_accuracy": _acc([_fused_right(x) for x in rows])}
    for mod in MODALITIES:
        entry[f"{mod}_accuracy_when_present"] = _acc([_single_right(x, mod) for x in got if _present(x, mod)])
    single = {mod: _acc([_single_right(x, mod) for x in got]) for mod in MODALITIES}
    entry["single_accuracy"] = single
    if got:
        best = max(MODALITIES, key=lambda k: single[k] or 0.0)
        entry["best_single"] = best
        entry["fused_minus_best_single"] = round((entry["fused_accuracy"] or 0.0) - (single[best] or 0.0), 4)
    return entry


def _voice_kind(m: Match) -> str:
    speech = (m.utterance.get("sources") or {}).get("speech") or {}
    return "espeak" if speech.get("kind") == "meld" else str(speech.get("kind") or "unknown")


def by_voice(matches: Sequence[Match]) -> dict[str, Any]:
    """Per kind of voice (RAVDESS actor, espeak-ng): how the audio branch reads lines whose voice carries the
    emotion, and what it says where the voice is plain (the right answer there is neutral)."""
    out: dict[str, Any] = {}
    for kind in sorted({_voice_kind(m) for m in matches}):
        rows = [m for m in matches if _voice_kind(m) == kind and m.event is not None]
        carried = [m for m in rows if "voice" in m.utterance.get("cues", ())]
        plain = [modality_label(m.event, "audio") for m in rows  # type: ignore[arg-type]
                 if "voice" not in m.utterance.get("cues", ())]
        out[kind] = {"n": len(rows),
                     "voice_carries": {"n": len(carried), "audio_accuracy": _acc([_single_right(m, "audio")
                                                                                  for m in carried])},
                     "voice_plain": {"n": len(plain), "audio_says_neutral": _acc([a == "neutral" for a in plain]),
                                     "audio_labels": dict(Counter(a or "absent" for a in plain).most_common())}}
    return out


def score(matches: Sequence[Match], labels: Sequence[str] = MELD_LABELS) -> dict[str, Any]:
    """Every metric of the benchmark from matched utterances (see the module docstring)."""
    from training.metrics import compute_metrics, word_error_rate

    hit = [m for m in matches if m.event is not None]
    truth = [m.utterance["emotion"] for m in hit]
    pred = [m.event["label"] for m in hit if m.event is not None]
    out: dict[str, Any] = {"utterances": len(matches), "matched": len(hit),
                           "all": {"n": len(matches), "accuracy": _acc([_fused_right(m) for m in matches])}}
    if hit:
        idx = {name: i for i, name in enumerate(labels)}
        m = compute_metrics([idx[t] for t in truth], [idx[p] for p in pred], list(labels))
        out["fused"] = {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1", "per_class_f1", "support")}
        out["confusion"] = m["confusion"]
    else:
        out["fused"] = {"n": 0, "accuracy": None, "weighted_f1": None, "macro_f1": None}
    out["modalities"] = {
        mod: {"reads": MODALITY_OF_CUE[mod], "present": sum(_present(x, mod) for x in hit),
              "present_rate": _acc([_present(x, mod) for x in hit]),
              "accuracy_when_present": _acc([_single_right(x, mod) for x in hit if _present(x, mod)])}
        for mod in MODALITIES}
    out["by_cue"] = {cue: _by_cue([x for x in matches if x.utterance["cue_type"] == cue]) for cue in CUE_TYPES}
    out["by_voice"] = by_voice(matches)
    out["neutral_share"] = {"predicted": _acc([p == "neutral" for p in pred]),
                            "true": _acc([t == "neutral" for t in truth]),
                            "true_all_utterances": _acc([m.utterance["emotion"] == "neutral" for m in matches])}
    if hit:  # what the ASR made of the words: the text branch reads nothing else
        out["asr"] = {"word_error_rate": round(word_error_rate([x.utterance["text"] for x in hit],
                                                               [x.event.get("text") or "" for x in hit]), 4)}
    shown = [x for x in hit if x.utterance.get("face") == "shown"]
    absent = [x for x in hit if x.utterance.get("face") == "absent"]
    out["face"] = {"shown": len(shown), "video_present_when_shown": _acc([_present(x, "video") for x in shown]),
                   "detectable_when_shown": _acc([bool(x.utterance.get("face_detectable")) for x in shown]),
                   "absent": len(absent), "video_present_when_absent": _acc([_present(x, "video") for x in absent])}
    return out


def _pct(v: Optional[float]) -> str:
    return "   -" if v is None else f"{100 * v:4.0f}"


def table(summary: Mapping[str, Any]) -> str:
    """A compact text table of the summary (accuracies in %)."""
    c = summary["counts"]
    f = summary["fused"]
    lines = [
        f"{summary['conversations']} conversations, {summary['utterances']} utterances: {summary['matched']} matched, "
        f"{c['missed']} missed, {c['splits']} split, {c['merges']} merged, {c['spurious']} spurious, "
        f"{c['failed']} failed events",
        f"fused (matched): acc {_pct(f['accuracy'])}  wF1 {_pct(f['weighted_f1'])}  mF1 {_pct(f['macro_f1'])} | "
        f"all utterances acc {_pct(summary['all']['accuracy'])}",
        "cue type        n  fused  text audio video  best  fused-best   (single: absent = wrong)",
    ]
    for cue, e in summary["by_cue"].items():
        s = e["single_accuracy"]
        d = e.get("fused_minus_best_single")
        delta = "   -" if d is None else f"{100 * d:+5.0f}"
        lines.append(f"{cue:<12} {e['n']:4d}  {_pct(e['fused_accuracy'])}  {_pct(s['text'])} {_pct(s['audio'])} "
                     f"{_pct(s['video'])}  {e.get('best_single', '-'):>5}  {delta}")
    mods = summary["modalities"]
    lines.append("modality when present: " + ", ".join(
        f"{m} ({v['reads']}) {_pct(v['accuracy_when_present']).strip()}% of {v['present']}" for m, v in mods.items()))
    n = summary["neutral_share"]
    fc = summary["face"]
    lines.append(f"neutral share: predicted {_pct(n['predicted'])}, true {_pct(n['true'])} | face shown {fc['shown']}: "
                 f"video present {_pct(fc['video_present_when_shown'])}, Haar-detectable at render "
                 f"{_pct(fc['detectable_when_shown'])}; face absent {fc['absent']}: video present "
                 f"{_pct(fc['video_present_when_absent'])}")
    for kind, v in (summary.get("by_voice") or {}).items():
        top = ", ".join(f"{k} {n}" for k, n in list(v["voice_plain"]["audio_labels"].items())[:3])
        lines.append(f"{kind} voices: audio right on {_pct(v['voice_carries']['audio_accuracy']).strip()}% of "
                     f"{v['voice_carries']['n']} lines the voice carries; on {v['voice_plain']['n']} plain-voice "
                     f"lines it says neutral {_pct(v['voice_plain']['audio_says_neutral']).strip()}% ({top})")
    if "asr" in summary:
        lines.append(f"ASR word error rate over the matched utterances: {100 * summary['asr']['word_error_rate']:.1f} %")
    return "\n".join(lines)


# ------------------------------------------------------------------ running
def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def conversations(dev: Path, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """The scripts of a composed folder, in manifest order (the first `limit`)."""
    manifest = json.loads((dev / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("plan_only"):
        raise ValueError(f"{dev} holds a plan only (compose --plan-only); render it first")
    items = manifest["conversations"][: limit if limit is not None else None]
    return [json.loads((dev / c["script"]).read_text(encoding="utf-8")) for c in items]


def stream_command() -> list[str]:
    exe = Path(sys.executable).with_name("magtkd-stream")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("magtkd-stream")
    return [found] if found else [sys.executable, "-m", "magtkd_stream.cli"]


def run_product(media: Sequence[Path], events_dir: Path, config: str, overrides: Sequence[str],
                vectors_dir: Optional[Path] = None) -> float:
    """`magtkd-stream run --fast --out-dir events_dir FILES...` once; returns its wall seconds."""
    cmd = stream_command() + ["run", "--fast", "--config", config, "--out-dir", str(events_dir)]
    if vectors_dir is not None:
        cmd += ["--vectors-dir", str(vectors_dir)]
    for item in overrides:
        cmd += ["--set", item]
    cmd += [str(m) for m in media]
    log.info("running %s", " ".join(cmd[:8] + ["..."]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: some file yielded no utterance; still scored
        raise RuntimeError(f"magtkd-stream run exited with {proc.returncode}")
    return wall


def _match_row(conversation: str, x: Match) -> dict[str, Any]:
    u, e = x.utterance, x.event
    row = {"conversation": conversation, "utterance": u["index"], "emotion": u["emotion"], "cue_type": u["cue_type"],
           "face": u["face"], "n_events": x.n_events, "fused": e["label"] if e else None}
    row.update({mod: modality_label(e, mod) if e else None for mod in MODALITIES})
    row.update(heard=e.get("text") if e else None, said=u["text"])
    return row


def score_dev(dev: Path, out: Path, config: str = "lite", overrides: Sequence[str] = (), limit: Optional[int] = None,
              reuse_events: bool = False, vectors: bool = False) -> dict[str, Any]:
    """Run (unless reuse_events) and score a composed folder; writes summary.json, matches.jsonl, confusion.png.

    vectors: also record the encoder vectors of every utterance in OUT/vectors/
    (training/stage2/served.py trains stage 2 on them; a train composition is run this way).
    """
    from training.metrics import save_confusion_png

    convs = conversations(dev, limit)
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    if reuse_events:  # keep the wall time of the run that wrote the events
        old = out / "summary.json"
        wall = json.loads(old.read_text(encoding="utf-8")).get("product_wall_s") if old.is_file() else None
    else:
        wall = run_product([dev / c["media"] for c in convs], events_dir, config, overrides,
                           out / "vectors" if vectors else None)
    matches: list[Match] = []
    speakers: dict[str, list[tuple[str, str]]] = {}  # conversation -> (true speaker, event's speaker label)
    counts = {"merges": 0, "spurious": 0, "failed": 0, "events": 0}
    per_conv = []
    with open(out / "matches.jsonl", "w", encoding="utf-8") as fh:
        for c in convs:
            m = match_events(c["utterances"], read_events(events_dir / f"{c['id']}.jsonl"))
            for k in counts:
                counts[k] += getattr(m, k)
            matches += m.matches
            speakers[c["id"]] = [(x.utterance["speaker"], x.event["speaker"]) for x in m.matches
                                 if x.event is not None and x.event.get("speaker") is not None]
            per_conv.append({"id": c["id"], "utterances": len(m.matches), "missed": m.missed, "splits": m.splits,
                             "merges": m.merges, "details": m.details})
            for x in m.matches:
                fh.write(json.dumps(_match_row(c["id"], x)) + "\n")
    split = json.loads((dev / "manifest.json").read_text(encoding="utf-8")).get("split")
    summary: dict[str, Any] = {"dev": str(dev), "split": split, "config": config, "overrides": list(overrides),
                               "conversations": len(convs), "product_wall_s": round(wall, 1) if wall else None}
    summary.update(score(matches))
    summary["counts"] = {**counts, "splits": sum(x.n_events >= 2 for x in matches),
                         "missed": sum(x.event is None for x in matches)}
    summary["speakers"] = attribution_summary(speakers)
    summary["per_conversation"] = per_conv
    if "confusion" in summary:
        summary["confusion_png"] = str(save_confusion_png(summary["confusion"], MELD_LABELS, out / "confusion.png",
                                                          title=f"fused, {summary['matched']} matched utterances"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
