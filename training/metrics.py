"""Classification scores reported for every evaluation, and the confusion-matrix figure.

Weighted F1 is what MAGTKD and its baselines report (and what model selection
uses); macro F1 and per-class F1 show what a weighted average hides on MELD's
skewed labels (neutral is almost half of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

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


def save_curves_png(epochs: Sequence[Mapping[str, Any]], path: str | Path, title: str = "",
                    best_epoch: int | None = None) -> Path:
    """Training loss (left) and dev scores (right) per epoch, the selected epoch marked.

    Takes either history shape: stage 2's ({"train": {loss: v}, "dev": {metric: v}}) or stage 1's flat rows
    ({"loss", "dev_weighted_f1", "dev_accuracy"}).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not epochs:
        raise ValueError("save_curves_png: no epochs to draw")
    xs = [int(e["epoch"]) + 1 for e in epochs]
    losses: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {}
    for e in epochs:
        train = e["train"] if isinstance(e.get("train"), Mapping) else {"loss": e.get("loss")}
        dev = e["dev"] if isinstance(e.get("dev"), Mapping) else {
            k.removeprefix("dev_"): v for k, v in e.items() if k.startswith("dev_")}
        for k, v in train.items():
            if k in ("total", "ce", "loss"):
                losses.setdefault(k, []).append(float(v) if v is not None else float("nan"))
        for k, v in dev.items():
            scores.setdefault(k, []).append(float(v))
    fig = Figure(figsize=(9.0, 3.4))
    FigureCanvasAgg(fig)
    for i, (series, ylabel) in enumerate(((losses, "training loss"), (scores, "dev score"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, values in series.items():
            ax.plot(xs[: len(values)], values, marker="o", markersize=3, label=name)
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="grey", linestyle="--", linewidth=1, label=f"selected ({best_epoch + 1})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
