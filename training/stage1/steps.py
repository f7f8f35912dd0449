"""The parts one stage-1 epoch is built from: optimiser groups, batches, schedule, loss and scoring.

Kept out of train.py so the loop there reads as the recipe (build, cache,
train, select, report) while these pieces can be tested on their own.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.config import Config
from magtkd_stream.encoders.base import Encoder, UtteranceModel
from magtkd_stream.model.losses import student_loss
from training.metrics import compute_metrics
from training.stage1.cache import TeacherOutputs
from training.stage1.inputs import UttRef, has_input
from training.stage1.loop import LiveSource, Source
from training.stage1.transcript_style import TranscriptStyler

logger = logging.getLogger(__name__)


def param_groups(model: UtteranceModel, lr: float, encoder_lr: Optional[float]) -> list[dict[str, Any]]:
    """Trainable encoder layers at encoder_lr (small steps keep pretrained layers useful), the rest at lr."""
    enc = {id(p) for p in model.encoder.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in enc]}]
    backbone = [p for p in trainable if id(p) in enc]
    if backbone:
        groups.append({"params": backbone, "lr": encoder_lr or lr})
    return groups


def length_grouped(order: Sequence[int], lengths: Sequence[int], batch_size: int, gen: torch.Generator,
                   pool_batches: int = 32) -> list[int]:
    """`order` regrouped so each batch holds inputs of similar length, batches in random order.

    Live encoders pad a batch to its longest input; sorting within pools of
    `pool_batches` batches cuts that padding (about half the compute for MELD
    prompts) while the pools and the batch order stay random.
    """
    batches: list[list[int]] = []
    pool = batch_size * pool_batches
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [i for k in perm for i in batches[k]]


def lr_schedule(total: int, warmup: int):
    """Linear warm-up over `warmup` optimizer steps, then linear decay to 0 at `total`."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def usable_rows(refs: list[UttRef], modality: str, encoder: Encoder, labelled: bool = True) -> list[int]:
    return [i for i, r in enumerate(refs)
            if (r.utt.label is not None or not labelled) and has_input(r.utt, modality, encoder)]


def label_tensor(refs: list[UttRef]) -> torch.Tensor:
    return torch.tensor([-100 if r.utt.label is None else int(r.utt.label) for r in refs], dtype=torch.long)


def kd_loss(logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
             teacher: Optional[TeacherOutputs], rows: torch.Tensor, cfg: Config) -> torch.Tensor:
    """CE on every row; the KD terms on the rows the teacher saw (the teacher may lack a modality)."""
    kd = cfg.kd
    if teacher is None:
        return student_loss(logits, labels, None, None, None, 0.0, 0.0, kd.tau, kd.tau_feat)
    t_ok = teacher.ok[rows].to(logits.device)
    t_logits, t_feats = teacher.logits[rows].to(logits.device), teacher.feats[rows].to(logits.device)
    if bool(t_ok.all()):
        return student_loss(logits, labels, t_logits, feats, t_feats, kd.w_soft, kd.w_feat, kd.tau, kd.tau_feat)
    loss = student_loss(logits, labels, None, None, None, 0.0, 0.0, kd.tau, kd.tau_feat)
    if int(t_ok.sum()) >= 2:
        unlabelled = torch.full_like(labels[t_ok], -100)
        loss = loss + student_loss(logits[t_ok], unlabelled, t_logits[t_ok], feats[t_ok], t_feats[t_ok],
                                   kd.w_soft, kd.w_feat, kd.tau, kd.tau_feat)
    return loss


def evaluate_source(source: Source, split: str, rows: list[int], labels: torch.Tensor,
                    names: tuple[str, ...], batch_size: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """compute_metrics over the rows the model could see; (metrics, y_true, y_pred)."""
    y_true: list[int] = []
    y_pred: list[int] = []
    for idx, _feats, logits, keep in source.batches(split, rows, batch_size, train=False):
        pred = logits.argmax(-1).cpu()
        keep = keep.cpu()
        y_true += labels[idx][keep].tolist()
        y_pred += pred[keep].tolist()
    if not y_true:
        return {"n": 0}, np.zeros(0, np.int64), np.zeros(0, np.int64)
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return compute_metrics(t, p, names), t, p


def score_asr_style(source: LiveSource, split: str, rows: list[int], lengths: Optional[dict[str, list[int]]],
                     labels: torch.Tensor, names: tuple[str, ...], batch_size: int, name: str) -> dict[str, Any]:
    """The split scored again with every turn rewritten as ASR output: how the teacher fares on transcripts."""
    source.eval_transform = TranscriptStyler(1.0)
    try:
        order = sorted(rows, key=lengths[split].__getitem__) if lengths else rows
        m, _, _ = evaluate_source(source, split, order, labels, names, batch_size)
    finally:
        source.eval_transform = None
    if "weighted_f1" in m:
        logger.info("stage 1 %s %s as ASR output (no '!', '...', quotes): weighted-F1 %.4f acc %.4f", name, split,
                    m["weighted_f1"], m["accuracy"])
    return m
