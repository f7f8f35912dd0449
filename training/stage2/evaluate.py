"""Stage 2's predictions and scores: the fused head over dialogues, per-source metrics, calibration.

Shared by training (model selection, the final report) and by `evaluate`,
which scores a shipped checkpoint on a features file, so both count the
same utterances the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from magtkd_stream.model.checkpoint import Checkpoint, load_checkpoint
from magtkd_stream.config import Config
from magtkd_stream.model.magt import MAGT
from training.metrics import compute_metrics
from training.runs import progress, resolve_device
from training.stage2.features import DialogueFeatures, choose_feature_kinds, collate_features, load_features


@dataclass
class Predictions:
    """Labelled utterances only, flattened in dialogue order."""

    y_true: np.ndarray  # (N,) int64
    y_pred: np.ndarray  # (N,) int64
    sources: np.ndarray  # (N,) str
    logits: np.ndarray | None = None  # (N, C) fused logits, for calibration


def batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[list[int]]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


@torch.no_grad()
def predict(
    model: MAGT,
    dialogues: Sequence[DialogueFeatures],
    kinds: Mapping[str, str],
    window: int,
    batch_size: int,
    device: torch.device,
    desc: str = "eval",
) -> Predictions:
    """Predictions of the fused head for every labelled utterance, with context `window` (0 = full)."""
    model.eval()
    ys, ps, srcs, zs = [], [], [], []
    for idx in progress(batches(len(dialogues), batch_size, None), desc=desc, unit="batch"):
        group = [dialogues[i] for i in idx]
        batch = collate_features(group, kinds, model.feature_dim)
        labels = batch.pop("labels")
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**batch, window=window).logits.float().cpu()  # (B, L, C)
        sel = labels >= 0
        ys.append(labels[sel].numpy())
        ps.append(logits.argmax(-1)[sel].numpy())
        zs.append(logits[sel].numpy())
        srcs.append(np.array([d.source for d in group], dtype=object)[sel.nonzero()[:, 0].numpy()])
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))  # noqa: E731
    z = np.concatenate(zs).astype(np.float32) if zs else None
    return Predictions(cat(ys, np.int64), cat(ps, np.int64), cat(srcs, object), z)


def score(pred: Predictions, labels: Sequence[str], window: int) -> dict[str, Any]:
    """compute_metrics plus the window, and per-source scores when sources are mixed."""
    out = {"window": window, **compute_metrics(pred.y_true, pred.y_pred, labels)}
    sources = sorted(set(pred.sources.tolist()))
    if len(sources) > 1:
        out["by_source"] = {}
        for s in sources:
            sel = pred.sources == s
            m = compute_metrics(pred.y_true[sel], pred.y_pred[sel], labels)
            out["by_source"][s] = {k: m[k] for k in ("n", "accuracy", "weighted_f1", "macro_f1")}
    return out


def calibrate_outputs(model: MAGT, dev: Sequence[DialogueFeatures], kinds: Mapping[str, str],
                      heads: Mapping[str, Mapping[str, torch.Tensor]], window: int, batch_size: int,
                      device: torch.device) -> dict[str, dict[str, float]]:
    """A temperature (and dev ECE before/after) for the fused output and for each stage-1 head."""
    from training.stage2.calibration import calibrate

    pred = predict(model, dev, kinds, window, batch_size, device, "calibrate")
    out = {"fused": calibrate(pred.logits, pred.y_true)}
    for m, sd in heads.items():
        if "cls.weight" not in sd:
            continue
        rows = [(d.feats[kinds[m]][i], int(d.labels[i])) for d in dev if kinds[m] in d.feats
                for i in np.flatnonzero(d.present[m] & (d.labels >= 0))]
        if not rows:
            continue
        x = torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.float32))
        z = (x @ sd["cls.weight"].float().T + sd["cls.bias"].float()).numpy()
        out[m] = calibrate(z, np.array([r[1] for r in rows]))
    return out


def evaluate_stage2(
    cfg: Config, checkpoint: str | Path | Checkpoint, features_file: str | Path | Sequence[str | Path], window: int
) -> dict[str, Any]:
    """Score a stage-2 checkpoint on one features file, or the union of several, with context `window`.

    Several files (one split of several sources) are scored as one set, as
    model selection scores the union of dev splits; "by_source" splits it up.
    The model is rebuilt from the checkpoint's own config; `cfg` gives batch size and device.
    """
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    files = [features_file] if isinstance(features_file, (str, Path)) else list(features_file)
    dialogues: list[DialogueFeatures] = []
    for file in files:
        part, meta = load_features(file)
        if list(meta["labels"]) != ck.labels:
            raise ValueError(f"{file}: features are labelled {meta['labels']}, the checkpoint {ck.labels}")
        dialogues.extend(part)
    model = MAGT(ck.config.magt, ck.config.feature_dim, len(ck.labels))
    model.load_state_dict(ck.state_dict("magt"))
    device = resolve_device(cfg.train.stage2.device)
    model.to(device)
    kinds = ck.extra.get("feature_kinds") or choose_feature_kinds(dialogues, ck.config.kd)
    pred = predict(model, dialogues, kinds, window, cfg.train.stage2.batch_size, device, f"eval w={window}")
    return score(pred, ck.labels, window)
