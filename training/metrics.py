"""Classification scores reported for every evaluation, and the confusion-matrix figure.

Weighted F1 is what MAGTKD and its baselines report (and what model selection
uses); macro F1 and per-class F1 show what a weighted average hides on MELD's
skewed labels (neutral is almost half of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def compute_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    labels: Sequence[str]) -> dict[str, Any]:
    """Scores of integer predictions against integer labels (indices into `labels`).

    Returns accuracy, weighted_f1, macro_f1 (over the classes that occur in
    y_true or y_pred, as scikit-learn does by default), per_class_f1 and support
    by label name (0.0 / 0 for classes that never occur), confusion (rows = true,
    columns = predicted, list of lists over all labels) and n.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    C = len(labels)
    if t.shape != p.shape:
        raise ValueError(f"compute_metrics: {t.size} labels but {p.size} predictions")
    if t.size == 0:
        raise ValueError("compute_metrics: no labelled utterances to score")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if int(arr.min()) < 0 or int(arr.max()) >= C:
            raise ValueError(f"compute_metrics: {name} holds class ids outside [0, {C}) for labels {list(labels)}")
    everything = list(range(C))
    occurring = sorted(set(t.tolist()) | set(p.tolist()))
    per_class = f1_score(t, p, labels=everything, average=None, zero_division=0)
    support = np.bincount(t, minlength=C)
    return {
        "n": int(t.size),
        "accuracy": float(accuracy_score(t, p)),
        "weighted_f1": float(f1_score(t, p, labels=everything, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(t, p, labels=occurring, average="macro", zero_division=0)),
        "per_class_f1": {name: float(per_class[i]) for i, name in enumerate(labels)},
        "support": {name: int(support[i]) for i, name in enumerate(labels)},
        "confusion": confusion_matrix(t, p, labels=everything).astype(int).tolist(),
    }


def save_confusion_png(cm: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str], path: str | Path,
                       title: str = "") -> Path:
    """Draw a confusion matrix (rows = true) as a PNG: colour by row share, counts written in each cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(cm, dtype=np.int64)
    C = len(labels)
    if m.shape != (C, C):
        raise ValueError(f"save_confusion_png: matrix of shape {m.shape} does not fit {C} labels")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    size = 1.6 + 0.7 * C
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)  # the Agg canvas renders without any GUI backend or pyplot state
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(C), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(C), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(C):
        for j in range(C):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=100)
    return path


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate of transcripts against scripts, case and punctuation ignored.

    The service only reads what the ASR hears, so benchmarks report how much of
    the words came through (an empty hypothesis counts every word as deleted).
    """
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"word_error_rate needs as many hypotheses as references, at least one "
                         f"(got {len(references)} and {len(hypotheses)})")
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return float(jiwer.wer(list(references), [h or "-" for h in hypotheses],
                           reference_transform=norm, hypothesis_transform=norm))
