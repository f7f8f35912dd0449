"""The dev scorer: event-to-utterance matching (split, merge, missed) and its metrics on hand-made events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest

from magtkd_stream.labels import MELD_LABELS
from training.devset.score_dev import match_events, score, score_dev, table


def _utt(i: int, start: float, end: float, emotion: str, cue_type: str, face: str) -> dict[str, Any]:
    cues = [] if cue_type == "none" else cue_type.split("+")
    return {"index": i, "speaker": "A", "start": start, "end": end, "emotion": emotion, "cue_type": cue_type,
            "cues": cues, "text": f"line {i}", "face": face, "face_detectable": face == "shown"}


def _mod(label: Optional[str]) -> dict[str, Any]:
    probs = {k: (1.0 if k == label else 0.0) for k in MELD_LABELS}
    return {"present": label is not None, "label": label, "probs": probs if label else None}


def _event(start: float, end: float, label: str, text: Optional[str], audio: Optional[str], video: Optional[str],
           status: str = "ok", heard: str = "heard") -> dict[str, Any]:
    return {"type": "emotion", "status": status, "start": start, "end": end, "label": label if status == "ok" else None,
            "probs": {k: float(k == label) for k in MELD_LABELS}, "text": heard,
            "modalities": {"text": _mod(text), "audio": _mod(audio), "video": _mod(video)}}


UTTERANCES = [
    _utt(0, 1.0, 2.0, "anger", "voice", "absent"),
    _utt(1, 3.0, 5.0, "joy", "words", "shown"),
    _utt(2, 6.0, 7.0, "sadness", "face", "shown"),
    _utt(3, 7.6, 8.6, "neutral", "none", "shown"),
    _utt(4, 10.0, 11.0, "fear", "voice+face", "shown"),
]
EVENTS = [
    {"type": "transcript", "start": 0.8, "end": 2.2},
    _event(0.8, 2.2, "anger", "neutral", "anger", None, heard="Line 0."),  # u0, right
    _event(2.8, 3.9, "joy", "joy", "neutral", "neutral"),  # u1, overlap 0.9
    _event(4.0, 5.2, "neutral", "joy", "neutral", None, heard="line one"),  # u1, overlap 1.0: scored (wrong) -> split
    _event(5.8, 8.0, "sadness", "neutral", "neutral", "sadness", heard="line"),  # u2 1.0, u3 0.4 -> merge, assigned to u2
    _event(13.0, 13.5, "joy", "joy", None, None),  # spurious
    _event(10.2, 10.8, "fear", None, None, None, status="failed"),  # failed: u4 stays missed
]


def test_matching_counts() -> None:
    m = match_events(UTTERANCES, EVENTS)
    assert (m.events, m.failed, m.spurious, m.merges, m.splits, m.missed) == (5, 1, 1, 1, 1, 2)
    assert [x.n_events for x in m.matches] == [1, 2, 1, 0, 0]
    assert m.matches[1].event["start"] == 4.0  # the larger overlap is scored
    assert m.matches[3].event is None and m.matches[4].event is None


def test_metrics_known_values() -> None:
    s = score(match_events(UTTERANCES, EVENTS).matches)
    assert s["matched"] == 3 and s["utterances"] == 5
    assert s["fused"]["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["all"]["accuracy"] == pytest.approx(0.4)
    assert s["fused"]["weighted_f1"] == pytest.approx(2 / 3, abs=1e-4)  # anger 1, joy 0, sadness 1 by support
    assert s["fused"]["macro_f1"] == pytest.approx(0.5)  # over anger, joy, neutral (predicted), sadness
    voice = s["by_cue"]["voice"]
    assert (voice["n"], voice["matched"], voice["fused_accuracy"], voice["all_accuracy"]) == (1, 1, 1.0, 1.0)
    assert voice["single_accuracy"] == {"text": 0.0, "audio": 1.0, "video": 0.0}
    assert voice["best_single"] == "audio" and voice["fused_minus_best_single"] == 0.0
    words = s["by_cue"]["words"]
    assert words["fused_accuracy"] == 0.0 and words["single_accuracy"]["text"] == 1.0
    assert words["fused_minus_best_single"] == -1.0
    assert s["by_cue"]["face"]["single_accuracy"]["video"] == 1.0
    assert s["by_cue"]["none"]["matched"] == 0 and s["by_cue"]["none"]["fused_accuracy"] is None
    both = s["by_cue"]["voice+face"]
    assert (both["n"], both["matched"], both["all_accuracy"], both["fused_accuracy"]) == (1, 0, 0.0, None)
    assert s["modalities"]["text"]["accuracy_when_present"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["modalities"]["video"]["present"] == 1 and s["modalities"]["video"]["accuracy_when_present"] == 1.0
    assert s["neutral_share"]["predicted"] == pytest.approx(1 / 3, abs=1e-4) and s["neutral_share"]["true"] == 0.0
    assert s["face"]["shown"] == 2 and s["face"]["video_present_when_shown"] == 0.5
    assert s["face"]["absent"] == 1 and s["face"]["video_present_when_absent"] == 0.0
    assert s["confusion"][MELD_LABELS.index("joy")][MELD_LABELS.index("neutral")] == 1
    # scored events heard "Line 0." (right), "line one" (1 substitution), "line" (1 deletion) of 6 words
    assert s["asr"]["word_error_rate"] == pytest.approx(2 / 6, abs=1e-4)


def test_score_dev_on_saved_events(tmp_path: Path) -> None:
    dev, out = tmp_path / "dev", tmp_path / "out"
    dev.mkdir()
    script = {"id": "conv-000", "media": "conv-000.mp4", "utterances": UTTERANCES}
    (dev / "conv-000.json").write_text(json.dumps(script))
    (dev / "manifest.json").write_text(json.dumps({"plan_only": False, "conversations": [
        {"id": "conv-000", "media": "conv-000.mp4", "script": "conv-000.json"}]}))
    (out / "events").mkdir(parents=True)
    (out / "events" / "conv-000.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    summary = score_dev(dev, out, reuse_events=True)
    assert summary["counts"] == {"merges": 1, "spurious": 1, "failed": 1, "events": 5, "splits": 1, "missed": 2}
    assert json.loads((out / "summary.json").read_text())["fused"]["accuracy"] == summary["fused"]["accuracy"]
    assert (out / "confusion.png").stat().st_size > 0
    assert len((out / "matches.jsonl").read_text().splitlines()) == 5
    text = table(summary)
    assert "voice+face" in text and "2 missed" in text and "word error rate over the matched utterances: 33.3 %" in text


def test_stream_cli_takes_several_files() -> None:
    from magtkd_stream.cli import build_parser

    args = build_parser().parse_args(["run", "--fast", "--out-dir", "ev", "a.mp4", "b.mp4"])
    assert [str(f) for f in args.file] == ["a.mp4", "b.mp4"] and str(args.out_dir) == "ev"
    one = build_parser().parse_args(["run", "a.mp4", "--out", "e.jsonl"])
    assert [str(f) for f in one.file] == ["a.mp4"] and one.out_dir is None


def test_by_voice_says_how_the_voice_head_reads_each_kind_of_voice() -> None:
    from training.devset.score_dev import Match, by_voice

    def utt(i: int, kind: str, cue_type: str, emotion: str) -> dict[str, Any]:
        u = _utt(i, 2.0 * i, 2.0 * i + 1, emotion, cue_type, "absent")
        u["sources"] = {"speech": {"kind": kind}}
        return u

    matches = [
        Match(utt(0, "ravdess", "voice", "anger"), _event(0, 1, "anger", "neutral", "anger", None)),
        Match(utt(1, "ravdess", "voice", "fear"), _event(2, 3, "fear", "neutral", "sadness", None)),
        Match(utt(2, "ravdess", "none", "neutral"), _event(4, 5, "neutral", "neutral", "neutral", None)),
        Match(utt(3, "meld", "words", "joy"), _event(6, 7, "joy", "joy", "sadness", None)),  # espeak reads the line
        Match(utt(4, "meld", "none", "neutral"), _event(8, 9, "neutral", "neutral", "sadness", None)),
        Match(utt(5, "meld", "words", "anger"), None),  # missed: not counted
    ]
    v = by_voice(matches)
    assert set(v) == {"espeak", "ravdess"}
    assert v["ravdess"]["voice_carries"] == {"n": 2, "audio_accuracy": 0.5}
    assert v["ravdess"]["voice_plain"] == {"n": 1, "audio_says_neutral": 1.0, "audio_labels": {"neutral": 1}}
    assert v["espeak"]["n"] == 2 and v["espeak"]["voice_carries"] == {"n": 0, "audio_accuracy": None}
    assert v["espeak"]["voice_plain"] == {"n": 2, "audio_says_neutral": 0.0, "audio_labels": {"sadness": 2}}
    assert "espeak voices" in table({**score(matches), "counts": {"missed": 1, "splits": 0, "merges": 0,
                                                                 "spurious": 0, "failed": 0}, "conversations": 1})


def test_speaker_attribution_matches_labels_one_to_one() -> None:
    from training.devset.speakers import attribution, attribution_summary

    pairs = [("Ana", "B"), ("Ben", "A"), ("Ana", "B"), ("Ben", "A"), ("Ana", "A")]
    right, mapping = attribution(pairs)
    assert (right, mapping) == (4, {"Ana": "B", "Ben": "A"})
    merged = [("Ana", "A"), ("Ben", "A"), ("Ana", "A")]  # one label for two people: right on one of them only
    assert attribution(merged)[0] == 2
    summary = attribution_summary({"c1": pairs, "c2": merged, "empty": []})
    assert summary == {"utterances": 8, "accuracy": 0.75, "true_speakers_mean": 2.0, "labels_used_mean": 1.5}
