"""Scores against values worked out by hand, and the confusion-matrix figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.metrics import compute_metrics, save_confusion_png

LABELS = ["a", "b", "c", "d"]


def test_scores_match_hand_computed_values() -> None:
    # a: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 0.8;  b: TP 1, FP 1, FN 1 -> F1 0.5
    # c: TP 1, FP 1, FN 0 -> P 1/2, R 1, F1 2/3;  d never occurs
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = compute_metrics(y_true, y_pred, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 2 / 3, "d": 0.0})
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # over classes that occur
    assert m["support"] == {"a": 3, "b": 2, "c": 1, "d": 0}
    assert m["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_perfect_and_numpy_inputs() -> None:
    y = np.array([3, 1, 1, 0])
    m = compute_metrics(y, y.copy(), LABELS)
    assert m["accuracy"] == 1.0 and m["weighted_f1"] == 1.0 and m["macro_f1"] == 1.0
    assert m["per_class_f1"]["c"] == 0.0 and m["support"]["c"] == 0


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [([0, 1], [0], "2 labels but 1 predictions"), ([], [], "no labelled"), ([0, 4], [0, 1], r"y_true.*\[0, 4\)"),
     ([0, 1], [-1, 1], "y_pred")],
)
def test_bad_input_is_named(y_true: list[int], y_pred: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(y_true, y_pred, LABELS)


def test_confusion_png_is_written(tmp_path: Path) -> None:
    cm = compute_metrics([0, 0, 1, 2], [0, 1, 1, 2], LABELS)["confusion"]
    path = save_confusion_png(cm, LABELS, tmp_path / "sub" / "cm.png", title="dev")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 200
    with pytest.raises(ValueError, match="does not fit 3 labels"):
        save_confusion_png(cm, LABELS[:3], tmp_path / "bad.png")
