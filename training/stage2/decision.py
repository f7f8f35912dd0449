"""Fit the decision layer (magtkd_stream/model/decision.py) on conversations the service has run.

Why here and not inside stage 2: the layer weighs MAGT's output against the
heads' as the *service* computes them (VAD cuts, ASR transcripts in the
prompt, detected faces, the causal window, per-speaker normalisation), so its
rows come from replaying recorded vectors (`score-dev --vectors`) through the
service's own fusion worker, utterance by utterance, exactly as the run did.

Fitted on train compositions only; the regularisation and class weighting are
chosen on a dev composition's run: among the fits that predict "neutral" at
most NEUTRAL_RATIO times as often as it is true there (the product must not
fall back to "neutral"), the most accurate, then the best macro F1. A softmax
temperature is fitted on that dev run afterwards (argmax unchanged). Patterns
of present modalities with too few training rows are left to MAGT.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from magtkd_stream.model.checkpoint import load_checkpoint, model_id, save_checkpoint
from magtkd_stream.model.decision import DecisionLayer, decision_features, presence_pattern
from magtkd_stream.names import MODALITIES
from training.devset.score_dev import conversations
from training.stage2.calibration import expected_calibration_error, fit_temperature, softmax
from training.stage2.served import composed_folder, event_labels

log = logging.getLogger(__name__)

GRID_C = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
GRID_WEIGHT = (None, "balanced")
NEUTRAL_RATIO = 1.3  # the most "neutral" may be over-predicted on dev, as a share of its true share


@dataclass
class Rows:
    """Labelled utterances of served runs: the layer's inputs and what MAGT alone said."""

    x: np.ndarray  # (N, F) decision features
    y: np.ndarray  # (N,) label ids
    magt: np.ndarray  # (N, C) MAGT's probabilities
    patterns: list[str]
    cues: list[str]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def select(self, mask: np.ndarray) -> "Rows":
        idx = np.flatnonzero(mask)
        return Rows(self.x[idx], self.y[idx], self.magt[idx], [self.patterns[i] for i in idx],
                    [self.cues[i] for i in idx])


def replay_worker(checkpoint: Path) -> Any:
    """The service's fusion worker over `checkpoint`, in this process (no batcher thread is started)."""
    from magtkd_stream.streaming.workers import FusionWorker

    ck = load_checkpoint(checkpoint)
    dims = {m: int(d) for m, d in (ck.extra.get("encoder_dims") or {}).items()}
    return FusionWorker(ck.config, dims, checkpoint=str(checkpoint))


def served_rows(served: Path, worker: Any, digest: str) -> Rows:
    """Every labelled utterance of a served run, replayed through `worker` in the order the service fused them."""
    from magtkd_stream.streaming.vector_tap import load_vectors

    labels = list(worker.labels)
    index = {name: i for i, name in enumerate(labels)}
    xs, ys, magts, patterns, cues = [], [], [], [], []
    for conv in conversations(composed_folder(served)):
        vec_file = served / "vectors" / f"{conv['id']}.npz"
        if not vec_file.is_file():
            log.warning("%s: no vectors for conversation %s; skipped", served, conv["id"])
            continue
        sv, meta = load_vectors(vec_file)
        if not str(meta.get("model") or "").endswith("@" + digest):
            raise ValueError(f"{vec_file}: computed by {meta.get('model')!r}, not by the checkpoint being extended "
                             f"(@{digest}); its text vectors come from that model's text encoder")
        which, cue = event_labels(conv["utterances"], sv.start, sv.end)
        session = f"replay-{served.name}-{conv['id']}"
        for j in range(len(sv)):
            vecs = {m: sv.vectors[m][j] if sv.present[m][j] else None for m in MODALITIES}
            out = worker.fuse_batch([(session, sv.speakers[j], vecs, True)])[0]
            if which[j] < 0:
                continue  # unlabelled context (merge, lesser split part, spurious): it stays in the window only
            heads = {m: None if out["modalities"][m] is None else np.array([out["modalities"][m][k] for k in labels])
                     for m in MODALITIES}
            magt = np.array([out["magt"][k] for k in labels])
            xs.append(decision_features(magt, heads))
            ys.append(index[conv["utterances"][which[j]]["emotion"]])
            magts.append(magt)
            patterns.append(presence_pattern({m: heads[m] is not None for m in MODALITIES}))
            cues.append(cue[j])
        worker.windows.pop(session, None)
    if not ys:
        raise ValueError(f"{served}: no labelled utterance with vectors (run `magtkd-train score-dev --vectors`)")
    log.info("%s: %d labelled utterances, patterns %s", served, len(ys), dict(Counter(patterns)))
    return Rows(np.stack(xs), np.array(ys), np.stack(magts), patterns, cues)


def join(rows: Sequence[Rows]) -> Rows:
    return Rows(np.concatenate([r.x for r in rows]), np.concatenate([r.y for r in rows]),
                np.concatenate([r.magt for r in rows]), [p for r in rows for p in r.patterns],
                [c for r in rows for c in r.cues])


def _scores(y: np.ndarray, probs: np.ndarray, neutral: Optional[int] = None) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    out = {"accuracy": round(float((pred == y).mean()), 4),
           "macro_f1": round(float(f1_score(y, pred, average="macro", labels=np.arange(probs.shape[1]))), 4),
           "ece": round(expected_calibration_error(probs, y), 4)}
    if neutral is not None:
        out["neutral_predicted"] = round(float((pred == neutral).mean()), 4)
        out["neutral_true"] = round(float((y == neutral).mean()), 4)
    return out


def _neutral_ok(s: Mapping[str, float]) -> bool:
    return "neutral_true" not in s or s["neutral_predicted"] <= NEUTRAL_RATIO * s["neutral_true"] + 1e-9


def layer_probs(layer: DecisionLayer, rows: Rows) -> np.ndarray:
    """The layer's output on rows (MAGT's probabilities where the row's pattern is not fitted)."""
    fitted = np.array([p in layer.patterns for p in rows.patterns])
    return np.where(fitted[:, None], softmax(layer.logits(rows.x)), rows.magt)


def fit_decision(train: Rows, dev: Rows, num_classes: int, min_rows: int = 50, seed: int = 0,
                 neutral: Optional[int] = None) -> DecisionLayer:
    """The layer chosen on `dev` among GRID_C x GRID_WEIGHT fits on `train`, with a dev-fitted temperature.

    neutral: the label id of "neutral", whose over-prediction on dev rules a fit out (None: no such rule).
    """
    from sklearn.linear_model import LogisticRegression

    counts = Counter(train.patterns)
    patterns = frozenset(p for p, n in counts.items() if n >= min_rows)
    if not patterns:
        raise ValueError(f"no pattern of present modalities has {min_rows} training rows: {dict(counts)}")
    fit_rows = train.select(np.array([p in patterns for p in train.patterns]))
    missing = sorted(set(range(num_classes)) - set(fit_rows.y.tolist()))
    if missing:
        raise ValueError(f"the training rows have no example of classes {missing}")
    best: Optional[tuple[tuple[bool, float, float], DecisionLayer, dict[str, Any]]] = None
    trials = []
    for c in GRID_C:
        for weight in GRID_WEIGHT:
            clf = LogisticRegression(C=c, class_weight=weight, max_iter=5000, random_state=seed)
            clf.fit(fit_rows.x, fit_rows.y)
            layer = DecisionLayer(clf.coef_, clf.intercept_, patterns)
            s = _scores(dev.y, layer_probs(layer, dev), neutral)
            trials.append({"C": c, "class_weight": weight or "none", **s})
            key = (_neutral_ok(s), s["accuracy"], s["macro_f1"])
            if best is None or key > best[0]:
                best = (key, layer, trials[-1])
    assert best is not None
    _, layer, chosen = best
    fitted = np.array([p in patterns for p in dev.patterns])
    t = fit_temperature(layer.logits(dev.x[fitted]), dev.y[fitted]) if fitted.any() else 1.0
    layer = DecisionLayer(layer.weight / t, layer.bias / t, patterns)
    layer.info = {"fitted_on": len(fit_rows), "per_pattern": {p: counts[p] for p in sorted(patterns)},
                  "chosen": {"C": chosen["C"], "class_weight": chosen["class_weight"]}, "temperature": round(t, 4),
                  "dev": {"magt": _scores(dev.y, dev.magt, neutral),
                          "decision": _scores(dev.y, layer_probs(layer, dev), neutral)},
                  "grid": trials}
    return layer


def by_cue(rows: Rows, probs: np.ndarray) -> dict[str, float]:
    right, cues = probs.argmax(1) == rows.y, np.array(rows.cues)
    return {c: round(float(right[cues == c].mean()), 4) for c in sorted(set(rows.cues))}


def extend_checkpoint(checkpoint: Path, layer: DecisionLayer, out: Path) -> Path:
    """`checkpoint` with the decision layer added (every other tensor and setting as it was)."""
    ck = load_checkpoint(checkpoint)
    modules: dict[str, dict[str, Any]] = {}
    for key, tensor in ck.tensors.items():
        head, _, rest = key.partition(".")
        if head == "decision":
            continue  # replaced
        modules.setdefault(head, {})[rest] = tensor
    modules["decision"] = layer.tensors()
    extra = {**ck.extra, "decision": layer.meta()}
    return save_checkpoint(out, modules, ck.config, ck.labels, extra=extra)


def run_decision(checkpoint: Path, served: Sequence[Path], select: Sequence[Path], out: Path,
                 report: Optional[Path] = None) -> dict[str, Any]:
    """Fit on the train runs `served`, choose on the dev runs `select`, write the extended checkpoint to `out`."""
    for folder in (*served, *select):
        split = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("split")
        want = "train" if folder in served else "dev"
        if split != want:
            raise ValueError(f"{folder}: a served {split!r} composition, given where a {want} one belongs "
                             "(fit on train runs, choose on dev runs)")
    ck = load_checkpoint(checkpoint)
    digest = model_id(str(checkpoint), ck.profile).rsplit("@", 1)[1]
    worker = replay_worker(checkpoint)
    if worker.model.decision is not None:
        raise ValueError(f"{checkpoint} already has a decision layer: extend the checkpoint it was fitted over")
    train = join([served_rows(Path(f), worker, digest) for f in served])
    dev = join([served_rows(Path(f), worker, digest) for f in select])
    layer = fit_decision(train, dev, len(ck.labels),
                         neutral=ck.labels.index("neutral") if "neutral" in ck.labels else None)
    extend_checkpoint(checkpoint, layer, out)
    summary = {"checkpoint": str(checkpoint), "out": str(out), "train_rows": len(train), "dev_rows": len(dev),
               **layer.meta(), "dev_by_cue": {"magt": by_cue(dev, dev.magt),
                                              "decision": by_cue(dev, layer_probs(layer, dev))}}
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
