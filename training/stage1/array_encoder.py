"""An encoder for precomputed per-utterance feature rows (face action units, MFCC blocks).

Some sources come with features instead of media: the RAVDESS paired file
holds 35 OpenFace action units and a 259-wide MFCC block per clip. An
`ArrayEncoder` reads one named row of `Utterance.arrays`, standardises it with
statistics fitted on the training split (so the scale of one column never
dominates), and passes it through a small MLP whose width is the encoder's
`dim`. It then plays the role of any backbone in stage 1 — teacher or
student, any modality — which is what the paired experiment
(`run_paired_kd_experiment`) needs to ask whether the stronger modality
should teach the weaker one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import Encoder, EncoderOutput
from magtkd_stream.names import MODALITIES

logger = logging.getLogger(__name__)


class ArrayEncoder(Encoder):
    """Standardise a fixed-width feature row, then an MLP: `dim`-wide utterance vectors.

    Items given to `collate` are 1-D arrays of width `in_dim`, or None where
    the utterance has no such row (reported absent). Stage 1 calls
    `fit_inputs` with the training items before training; the fitted mean and
    std are buffers listed in `fitted_buffers`, so checkpoints keep them.
    """

    fitted_buffers: ClassVar[tuple[str, ...]] = ("mean", "std")

    def __init__(
        self,
        modality: str,
        array_key: str,
        in_dim: int,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"ArrayEncoder modality {modality!r}: expected one of {list(MODALITIES)}")
        if in_dim < 1 or dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"ArrayEncoder widths must be >= 1: in_dim={in_dim}, dim={dim}, hidden={list(hidden)}")
        self.modality = modality  # type: ignore[misc]  # instance-level: one class serves every modality
        self.array_key = array_key
        self.in_dim = int(in_dim)
        self.dim = int(dim)
        widths = [self.in_dim, *[int(h) for h in hidden], self.dim]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.GELU(), nn.Dropout(dropout)) for a, b in zip(widths[:-1], widths[1:])
        )
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("std", torch.ones(self.in_dim))
        self.fitted = False

    def fit_inputs(self, items: Sequence[Optional[np.ndarray]]) -> None:
        """Column mean and std of the training rows (a constant column gets std 1)."""
        rows = [self._row(x, i) for i, x in enumerate(items) if x is not None]
        if not rows:
            raise ValueError(f"ArrayEncoder({self.array_key!r}).fit_inputs: no rows to fit standardisation on")
        data = np.stack(rows).astype(np.float64)
        std = data.std(axis=0)
        self.mean.copy_(torch.from_numpy(data.mean(axis=0)).float())
        self.std.copy_(torch.from_numpy(np.where(std > 1e-8, std, 1.0)).float())
        self.fitted = True

    def _row(self, x: Any, index: int) -> np.ndarray:
        row = np.asarray(x, dtype=np.float32).reshape(-1)
        if row.shape[0] != self.in_dim:
            raise ValueError(
                f"ArrayEncoder({self.array_key!r}) item {index}: expected a row of {self.in_dim} values, got {row.shape[0]}"
            )
        return row

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """{"x": (B, in_dim) standardised, "present": (B,)}; None items become absent zero rows."""
        if not items:
            raise ValueError("collate needs at least one item")
        x = np.zeros((len(items), self.in_dim), dtype=np.float32)
        present = np.zeros(len(items), dtype=bool)
        for i, item in enumerate(items):
            if item is None:
                continue
            row = self._row(item, i)
            if np.isfinite(row).all():
                x[i], present[i] = row, True
        xt = (torch.from_numpy(x) - self.mean.cpu()) / self.std.cpu()
        xt = xt * torch.from_numpy(present).unsqueeze(1).float()
        return {"x": xt, "present": torch.from_numpy(present)}

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        h = x
        for block in self.blocks:
            h = block(h)  # (B, width)
        present = present.to(device=h.device, dtype=torch.bool)
        return EncoderOutput(vectors=h * present.unsqueeze(1).to(h.dtype), present=present)

    def set_trainable_layers(self, n: int) -> None:
        """-1: every block; 0: frozen; n > 0: the top n MLP blocks."""
        if n < -1:
            raise ValueError(f"trainable layers must be >= -1 (-1 = all), got {n}")
        blocks = list(self.blocks)
        chosen = blocks if n == -1 else blocks[len(blocks) - min(n, len(blocks)) :] if n > 0 else []
        for p in self.parameters():
            p.requires_grad = False
        for block in chosen:
            for p in block.parameters():
                p.requires_grad = True


# ----------------------------------------------------------------------------- paired experiment

PAIRED_TRAIN_ACTORS = tuple(range(1, 15))
PAIRED_VAL_ACTORS = (15, 16)  # selection, carved from the training actors
PAIRED_TEST_ACTORS = tuple(range(17, 21))  # reported only, never used to select


@dataclasses.dataclass
class PairedSettings:
    """Optimiser settings of the paired experiment (small MLPs trained from scratch)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 60
    patience: int = 15
    warmup_ratio: float = 0.05
    grad_clip: float = 10.0
    dim: int = 64
    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.2


def _summary(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "values": [float(v) for v in arr]}


def run_paired_kd_experiment(
    npz_path: str | Path,
    out_dir: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    w_soft: Optional[float] = None,
    w_feat: Optional[float] = None,
    settings: Optional[PairedSettings] = None,
    cfg: Optional[Config] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Does KD from the face (action units) help the voice (MFCC), as text -> audio does in the paper?

    Per seed: (a) an MFCC audio student with cross-entropy only, (b) an AU
    teacher, (c) an MFCC student distilled from the frozen teacher. Actors
    01-14 train, 15-16 select (validation), 17-20 are reported (held out from
    selection). Returns, per model, mean/std accuracy on actors 17-20 over the
    seeds for the 8 RAVDESS classes and mapped onto MELD's 7 (calm -> neutral);
    also writes it to out_dir/paired_kd.json. KD weights default to cfg.kd.
    """
    from magtkd_stream.labels import MELD_LABELS, RAVDESS_LABELS, RAVDESS_TO_MELD, index_map
    from training.data.ravdess import AU_COLUMNS, MFCC_COLUMNS, load_ravdess_paired
    from training.stage1.train import Stage1Settings, predict_stage1, train_stage1

    if not seeds:
        raise ValueError("run_paired_kd_experiment needs at least one seed")
    settings = settings or PairedSettings()
    base = cfg if cfg is not None else Config(profile="paired_kd", feature_dim=settings.dim)
    kd = dataclasses.replace(  # replace() re-runs KDConfig's validation
        base.kd, teacher="video",
        w_soft=base.kd.w_soft if w_soft is None else float(w_soft),
        w_feat=base.kd.w_feat if w_feat is None else float(w_feat),
    )
    data = load_ravdess_paired(npz_path, train_actors=PAIRED_TRAIN_ACTORS, dev_actors=PAIRED_VAL_ACTORS,
                               test_actors=PAIRED_TEST_ACTORS, label_space="ravdess")
    to_meld = np.asarray(index_map(RAVDESS_LABELS, RAVDESS_TO_MELD, MELD_LABELS))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    widths = {"au": AU_COLUMNS.stop - AU_COLUMNS.start, "mfcc": MFCC_COLUMNS.stop - MFCC_COLUMNS.start}
    stage = Stage1Settings(lr=settings.lr, weight_decay=settings.weight_decay, batch_size=settings.batch_size,
                           eval_batch_size=256, epochs=settings.epochs, grad_clip=settings.grad_clip,
                           warmup_ratio=settings.warmup_ratio, patience=settings.patience, device="cpu",
                           cache_on_disk=False)
    scores: dict[str, dict[str, list[float]]] = {k: {"acc8": [], "acc7": [], "val_wf1": []}
                                                 for k in ("audio_ce", "video_teacher", "audio_kd")}

    def encoder(modality: str, key: str, seed: int) -> ArrayEncoder:
        torch.manual_seed(seed)
        enc = ArrayEncoder(modality, key, widths[key], settings.dim, settings.hidden, settings.dropout)
        enc.set_trainable_layers(-1)
        return enc

    for seed in seeds:
        cfg_s = dataclasses.replace(base, seed=int(seed), kd=kd, feature_dim=settings.dim)
        teacher = None
        for name, modality, key in (("audio_ce", "audio", "mfcc"), ("video_teacher", "video", "au"),
                                    ("audio_kd", "audio", "mfcc")):
            result = train_stage1(cfg_s, data, modality, run=None,
                                  teacher=teacher if name == "audio_kd" else None,
                                  encoder=encoder(modality, key, seed), settings=stage, progress=progress)
            if name == "video_teacher":
                teacher = result.model
            y_true, y_pred = predict_stage1(result.model, cfg_s, data, "test", batch_size=256)
            scores[name]["acc8"].append(float((y_true == y_pred).mean()))
            scores[name]["acc7"].append(float((to_meld[y_true] == to_meld[y_pred]).mean()))
            scores[name]["val_wf1"].append(float(result.metrics["best_dev_weighted_f1"]))
            logger.info("paired KD seed %d %s: test acc8 %.3f acc7 %.3f", seed, name,
                        scores[name]["acc8"][-1], scores[name]["acc7"][-1])
    report = {
        "npz": str(npz_path), "seeds": [int(s) for s in seeds],
        "splits": {"train_actors": list(PAIRED_TRAIN_ACTORS), "val_actors": list(PAIRED_VAL_ACTORS),
                   "test_actors": list(PAIRED_TEST_ACTORS)},
        "kd": {"w_soft": kd.w_soft, "w_feat": kd.w_feat, "tau": kd.tau, "tau_feat": kd.tau_feat},
        "settings": dataclasses.asdict(settings),
        "counts": {s: data.num_utterances(s) for s in data.splits},
        "results": {name: {k: _summary(v) for k, v in per.items()} for name, per in scores.items()},
    }
    report["kd_gain_acc8"] = report["results"]["audio_kd"]["acc8"]["mean"] - report["results"]["audio_ce"]["acc8"]["mean"]
    (out / "paired_kd.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def paired_summary_lines(report: Mapping[str, Any]) -> list[str]:
    """Human-readable lines of a run_paired_kd_experiment result."""
    lines = []
    for name, per in report["results"].items():
        lines.append(f"{name:14s} acc8 {per['acc8']['mean']:.3f} ± {per['acc8']['std']:.3f}   "
                     f"acc7 {per['acc7']['mean']:.3f} ± {per['acc7']['std']:.3f}")
    return lines
