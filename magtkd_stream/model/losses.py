"""Knowledge-distillation losses of MAGTKD (MAGTKD_SPEC.md) and the stage-1 / stage-2 objectives.

L_s (Pearson soft-label loss) matches the *shape* of the teacher's class
distribution per sample and per class instead of its exact values, which
tolerates a weaker student's different confidence scale. L_f (relation KL)
matches how samples relate to one another in feature space, so the student's
features need not live in the teacher's space, only keep its neighbourhoods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - typing only; magt imports nothing from here
    from magtkd_stream.model.magt import MAGTOutput

_EPS = 1e-12


def _check_pair(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(
            f"{what}: expected 2-D (batch, dim) tensors, got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")


def _pearson(x: Tensor, y: Tensor, dim: int) -> Tensor:
    """Correlation of x and y along `dim`; a constant vector correlates 0 (eps keeps it finite)."""
    xc = x - x.mean(dim=dim, keepdim=True)
    yc = y - y.mean(dim=dim, keepdim=True)
    num = (xc * yc).sum(dim=dim)
    den = torch.sqrt(xc.pow(2).sum(dim=dim) + _EPS) * torch.sqrt(yc.pow(2).sum(dim=dim) + _EPS)
    return num / den


def pearson_soft_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 2.0) -> Tensor:
    """L_s = tau^2 * (inter + intra) over a (B, C) batch of logits.

    inter = 1 - mean_i rho(p_s[i,:], p_t[i,:]); intra = 1 - mean_c rho(p_s[:,c], p_t[:,c]),
    with p = softmax(z / tau). The teacher side is used as given: callers detach it.
    """
    _check_pair(student_logits, teacher_logits, "pearson_soft_loss")
    if tau <= 0:
        raise ValueError(f"pearson_soft_loss: tau must be > 0, got {tau}")
    p_s = F.softmax(student_logits.float() / tau, dim=1)
    p_t = F.softmax(teacher_logits.float() / tau, dim=1)
    inter = 1.0 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - _pearson(p_s, p_t, dim=0).mean()
    return (tau**2) * (inter + intra)


def relation_kl_loss(feat_teacher: Tensor, feat_student: Tensor, tau_f: float = 1.0) -> Tensor:
    """L_f = KL(P || Q), mean over rows, with P = softmax(Ft Ft^T / tau_f), Q = softmax(Ft Fs^T / tau_f).

    Both feature sets are L2-normalised first, so only directions (relations) count.
    """
    _check_pair(feat_student, feat_teacher, "relation_kl_loss")
    if tau_f <= 0:
        raise ValueError(f"relation_kl_loss: tau_f must be > 0, got {tau_f}")
    ft = F.normalize(feat_teacher.float(), dim=1)
    fs = F.normalize(feat_student.float(), dim=1)
    log_p = F.log_softmax(ft @ ft.t() / tau_f, dim=1)  # (B, B)
    log_q = F.log_softmax(ft @ fs.t() / tau_f, dim=1)  # (B, B)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def _ce(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Cross-entropy over labelled rows; 0 (still in the graph) when no row is labelled."""
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def student_loss(
    logits: Tensor,
    labels: Tensor,
    teacher_logits: Optional[Tensor],
    feat_student: Optional[Tensor],
    feat_teacher: Optional[Tensor],
    w_soft: float,
    w_feat: float,
    tau: float,
    tau_feat: float,
    ignore_index: int = -100,
) -> Tensor:
    """Stage-1 student objective CE + w_soft * L_s + w_feat * L_f.

    CE skips rows labelled `ignore_index`; the KD terms use every row given (the
    teacher needs no label). A term whose weight is 0 is not computed and its
    inputs may be None. The teacher's logits and features are detached here:
    the teacher is frozen while it teaches.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"student_loss: expected logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    loss = _ce(logits, labels, ignore_index)
    if w_soft != 0:
        if teacher_logits is None:
            raise ValueError("student_loss: w_soft != 0 needs teacher_logits")
        loss = loss + w_soft * pearson_soft_loss(logits, teacher_logits.detach(), tau)
    if w_feat != 0:
        if feat_student is None or feat_teacher is None:
            raise ValueError("student_loss: w_feat != 0 needs feat_student and feat_teacher")
        loss = loss + w_feat * relation_kl_loss(feat_teacher.detach(), feat_student, tau_feat)
    return loss


def stage2_loss(
    out: "MAGTOutput",
    labels: Tensor,
    mask: Tensor,
    lambda_audio: float,
    lambda_video: float,
    tau: float,
    use_feat: bool,
    tau_feat: float,
    class_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Stage-2 objective over real, labelled utterances of a (B, L) batch of dialogues.

    total = CE(y) + l_a * [CE(y_a) + L_s(y_a, y) (+ L_f(t', a'))]
                  + l_v * [CE(y_v) + L_s(y_v, y) (+ L_f(t', v'))]
    The fused prediction y and t' teach the auxiliary heads and are detached on the
    teacher side, so the weaker branches never pull the fused output toward them.
    Labels < 0 mark unlabelled utterances; `mask` is True at real utterances.
    class_weight (C,) weighs the fused cross-entropy per class (rare classes up).
    Returns the total and a dict of detached float parts for logging.
    """
    if labels.shape != out.logits.shape[:2] or mask.shape != labels.shape:
        raise ValueError(
            f"stage2_loss: labels {tuple(labels.shape)} and mask {tuple(mask.shape)} must both be "
            f"(B, L) = {tuple(out.logits.shape[:2])}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"stage2_loss: mask must be a bool tensor (True = real utterance), got {mask.dtype}")
    sel = mask & (labels >= 0)  # (B, L)
    y, lab = out.logits[sel], labels[sel]  # (N, C), (N,)
    parts: dict[str, float] = {}
    if lab.numel() == 0:
        zero = (out.logits.sum() + out.logits_audio.sum() + out.logits_video.sum()) * 0.0
        names = ("ce", "audio_ce", "audio_soft", "audio_feat", "video_ce", "video_soft", "video_feat", "total")
        parts.update({k: 0.0 for k in names})
        return zero, parts
    weight = None if class_weight is None else class_weight.to(y.device, torch.float32)
    total = F.cross_entropy(y.float(), lab, weight=weight)
    parts["ce"] = float(total.detach())
    y_teacher = y.detach()
    t_teacher = out.t_prime[sel].detach() if use_feat else None
    branches = (
        ("audio", lambda_audio, out.logits_audio, out.a_prime),
        ("video", lambda_video, out.logits_video, out.v_prime),
    )
    for name, weight, logits_m, feat_m in branches:
        ce_m = soft_m = feat_loss = torch.zeros((), device=y.device)
        if weight != 0:
            y_m = logits_m[sel]
            ce_m = F.cross_entropy(y_m.float(), lab)
            soft_m = pearson_soft_loss(y_m, y_teacher, tau)
            branch = ce_m + soft_m
            if t_teacher is not None:
                feat_loss = relation_kl_loss(t_teacher, feat_m[sel], tau_feat)
                branch = branch + feat_loss
            total = total + weight * branch
        parts[f"{name}_ce"] = float(ce_m.detach())
        parts[f"{name}_soft"] = float(soft_m.detach())
        parts[f"{name}_feat"] = float(feat_loss.detach())
    parts["total"] = float(total.detach())
    return total, parts
