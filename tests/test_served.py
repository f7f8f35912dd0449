"""Training on served vectors: the vectors file, labels by media time, and the dialogues stage 2 reads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from magtkd_stream.labels import MELD_LABELS
from magtkd_stream.streaming.vector_tap import VectorRecorder, load_vectors
from training.stage2.features import IGNORE_LABEL
from training.stage2.served import event_labels, served_dialogues

UTTS = [
    {"index": 0, "start": 1.0, "end": 2.0, "emotion": "anger", "cue_type": "voice"},
    {"index": 1, "start": 3.0, "end": 5.0, "emotion": "joy", "cue_type": "words"},
    {"index": 2, "start": 6.0, "end": 7.0, "emotion": "sadness", "cue_type": "face"},
    {"index": 3, "start": 7.6, "end": 8.6, "emotion": "neutral", "cue_type": "none"},
]
# events: u0 exactly; u1 split in two (the second overlaps more); u2+u3 merged; one spurious
STARTS = np.array([0.9, 2.8, 4.0, 5.8, 12.0])
ENDS = np.array([2.1, 3.9, 5.2, 8.0, 12.5])


def _job(i: int, start: float, end: float, text: str) -> Any:
    return SimpleNamespace(index=i, start_s=start, end_s=end, speaker="A", text=text)


def test_labels_by_media_time_keep_splits_merges_and_spurious_as_context() -> None:
    which, cues = event_labels(UTTS, STARTS, ENDS)
    assert which == [0, -1, 1, -1, -1]
    assert cues == ["voice", "", "words", "", ""]


def test_recorder_round_trip_and_bad_file(tmp_path: Path) -> None:
    rec = VectorRecorder()
    rng = np.random.default_rng(0)
    rec(_job(1, 3.0, 4.0, "second"), {"text": rng.normal(size=4), "audio": None, "video": rng.normal(size=3)}, {})
    rec(_job(0, 1.0, 2.0, "first"), {"text": rng.normal(size=4), "audio": None, "video": None}, {})
    path = rec.save(tmp_path / "s.npz", model="lite:x@abc")
    sv, meta = load_vectors(path)
    assert meta["model"] == "lite:x@abc" and sv.index.tolist() == [0, 1] and sv.texts == ["first", "second"]
    assert sv.vectors["audio"].shape == (2, 0) and not sv.present["audio"].any()
    assert sv.present["video"].tolist() == [False, True] and sv.vectors["video"].shape == (2, 3)
    assert np.array_equal(sv.vectors["video"][0], np.zeros(3))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a vectors file"):
        load_vectors(junk)


def test_served_dialogues_apply_heads_and_label_by_time(tmp_path: Path) -> None:
    composed, served = tmp_path / "composed", tmp_path / "served"
    composed.mkdir()
    (composed / "conv-000.json").write_text(json.dumps({"id": "conv-000", "media": "conv-000.mp4", "utterances": UTTS}))
    (composed / "manifest.json").write_text(json.dumps({"split": "train", "plan_only": False, "conversations": [
        {"id": "conv-000", "media": "conv-000.mp4", "script": "conv-000.json"}]}))
    rec = VectorRecorder()
    for i, (s, e) in enumerate(zip(STARTS, ENDS)):
        rec(_job(i, float(s), float(e), f"heard {i}"),
            {"text": np.full(4, float(i)), "audio": np.full(2, 1.0), "video": np.ones(3) if i % 2 else None}, {})
    rec.save(served / "vectors" / "conv-000.npz", model="m")
    (served / "summary.json").write_text(json.dumps({"dev": str(composed), "split": "train"}))
    heads = {"text": lambda x: x[:, :2] * 2, "audio": lambda x: torch.cat([x, x], 1)[:, :2],
             "video": lambda x: x[:, :2] + 1}
    (d,) = served_dialogues(served, heads, {"text": "text", "audio": "audio", "video": "video"}, MELD_LABELS,
                            "train")
    lab = MELD_LABELS.index
    assert d.labels.tolist() == [lab("anger"), IGNORE_LABEL, lab("joy"), IGNORE_LABEL, IGNORE_LABEL]
    assert d.source == "served" and d.uids[0].endswith(":voice") and d.speakers.tolist() == [0] * 5
    assert d.feats["text"][:, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]  # the head ran on every utterance
    assert d.present["video"].tolist() == [False, True, False, True, False]
    assert d.feats["video"][0].tolist() == [0.0, 0.0] and d.feats["video"][1].tolist() == [2.0, 2.0]


def test_served_vectors_of_other_encoders_are_refused(tmp_path: Path) -> None:
    """Vectors recorded with another face CNN (or any other encoder setting) would be misread by the recipe's heads."""
    import dataclasses

    from training.lite import _check_served_encoders
    from training.recipe_inputs import load_recipe

    cfg = load_recipe("train_lite")
    served = {m: dataclasses.asdict(getattr(cfg.encoders, m)) for m in ("text", "audio", "video")}
    served["video"]["detector"] = "haar"  # detection settings do not change what a crop's vector is
    _check_served_encoders(tmp_path, json.loads(json.dumps(served)), cfg)
    served["video"]["model"] = "other_face_cnn.safetensors"
    with pytest.raises(ValueError, match=r"its video vectors were computed with other encoder settings.*model: "
                                         r"'other_face_cnn.safetensors' vs"):
        _check_served_encoders(tmp_path, served, cfg)
    _check_served_encoders(tmp_path, None, cfg)  # an older run without the record: accepted with a warning
