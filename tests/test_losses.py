"""Knowledge-distillation losses: hand-computed values, zero points, gradient routing, masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from magtkd_stream.model.losses import pearson_soft_loss, relation_kl_loss, stage2_loss, student_loss
from magtkd_stream.model.magt import MAGTOutput



# ------------------------------------------------------------------ pearson_soft_loss
def test_pearson_two_classes_two_samples_by_sign() -> None:
    # With 2 classes and 2 samples every centred vector is (e, -e): rho is the sign of e_s * e_t,
    # or 0 when one side is constant. tau = 2 -> factor tau^2 = 4.
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # same ranking in every row and column: all rho = +1 -> 0
    assert pearson_soft_loss(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), teacher, tau=2.0).item() == pytest.approx(
        0.0, abs=1e-5
    )
    # every row and column reversed: all rho = -1 -> inter = intra = 2 -> 4 * 4 = 16
    assert pearson_soft_loss(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), teacher, tau=2.0).item() == pytest.approx(
        16.0, rel=1e-5
    )
    # rows: +1 and -1 -> inter = 1; student columns are constant -> rho 0 -> intra = 1; 4 * 2 = 8
    assert pearson_soft_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), teacher, tau=2.0).item() == pytest.approx(
        8.0, rel=1e-5
    )


def test_pearson_2x3_plain_python() -> None:
    s_logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.5]]
    t_logits = [[2.0, 0.5, 0.0], [1.0, 1.0, 3.0]]
    tau = 2.0

    def softmax(row: list[float]) -> list[float]:
        ex = [math.exp(v / tau) for v in row]
        z = sum(ex)
        return [e / z for e in ex]

    ps = [softmax(r) for r in s_logits]
    pt = [softmax(r) for r in t_logits]

    def corr(x: list[float], y: list[float]) -> float:
        mx, my = sum(x) / len(x), sum(y) / len(y)
        num = sum((a - mx) * (b - my) for a, b in zip(x, y))
        return num / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))

    # two samples -> each column correlation is +-1: the column moves the same way or not.
    col_signs = []
    for c in range(3):
        ds, dt = ps[0][c] - ps[1][c], pt[0][c] - pt[1][c]
        col_signs.append(1.0 if ds * dt > 0 else -1.0)
    inter = 1.0 - (corr(ps[0], pt[0]) + corr(ps[1], pt[1])) / 2.0
    intra = 1.0 - sum(col_signs) / 3.0
    expected = tau * tau * (inter + intra)
    got = pearson_soft_loss(torch.tensor(s_logits), torch.tensor(t_logits), tau=tau).item()
    assert got == pytest.approx(expected, rel=1e-4)
    # class 2 gains mass from sample 0 to sample 1 for both student and teacher
    assert col_signs[2] == 1.0
    assert expected > 0.5


def test_pearson_zero_when_equal_and_invariant_to_logit_shift() -> None:
    torch.manual_seed(0)
    z = torch.randn(5, 4)
    assert pearson_soft_loss(z, z).item() == pytest.approx(0.0, abs=1e-5)
    # softmax ignores a per-row constant; the loss must too
    shift = torch.randn(5, 1) * 3
    a = pearson_soft_loss(z + shift, z.roll(1, 0))
    b = pearson_soft_loss(z, z.roll(1, 0))
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert b.item() > 0.1


def test_pearson_constant_input_is_finite_with_finite_grad() -> None:
    student = torch.zeros(1, 3, requires_grad=True)  # one sample, uniform distribution
    loss = pearson_soft_loss(student, torch.zeros(1, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # all rows/columns constant -> every rho = 0 -> tau^2 * (1 + 1)
    assert loss.item() == pytest.approx(8.0, rel=1e-6)


def test_pearson_bad_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        pearson_soft_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        pearson_soft_loss(torch.zeros(3), torch.zeros(3))


# ------------------------------------------------------------------ relation_kl_loss
def test_relation_kl_swapped_unit_vectors_plain_math() -> None:
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fs = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # P row 0 = softmax([1, 0]) = [p, 1-p], Q row 0 = softmax([0, 1]) = [1-p, p], p = e/(1+e):
    # KL = p log(p/(1-p)) + (1-p) log((1-p)/p) = (2p - 1) * log(p/(1-p)) = (2p - 1) * 1
    p = math.e / (1.0 + math.e)
    assert relation_kl_loss(ft, fs, tau_f=1.0).item() == pytest.approx(2 * p - 1, rel=1e-5)
    # tau_f = 0.5 doubles the logits: p2 = e^2/(1+e^2), log-odds 2
    p2 = math.e**2 / (1.0 + math.e**2)
    assert relation_kl_loss(ft, fs, tau_f=0.5).item() == pytest.approx((2 * p2 - 1) * 2.0, rel=1e-5)
    # features are normalised first: lengths do not matter
    assert relation_kl_loss(ft * 3.0, fs * 0.2, tau_f=1.0).item() == pytest.approx(2 * p - 1, rel=1e-5)


def test_relation_kl_zero_when_student_matches_teacher_direction() -> None:
    torch.manual_seed(1)
    ft = torch.randn(6, 8)
    assert relation_kl_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_kl_loss(ft, ft * 2.5).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_kl_loss(ft, torch.randn(6, 8)).item() > 1e-3


# ------------------------------------------------------------------ student_loss
def test_student_loss_composes_terms_and_skips_ignored_rows() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, -100, 1])
    teacher = torch.randn(4, 3)
    fs, ft = torch.randn(4, 5), torch.randn(4, 5)
    ce = F.cross_entropy(logits[[0, 1, 3]], labels[[0, 1, 3]])
    got = student_loss(logits, labels, teacher, fs, ft, w_soft=0.1, w_feat=1.0, tau=2.0, tau_feat=1.0)
    want = ce + 0.1 * pearson_soft_loss(logits, teacher, 2.0) + relation_kl_loss(ft, fs, 1.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # zero weights: teacher inputs may be absent, the loss is CE alone
    ce_only = student_loss(logits, labels, None, None, None, w_soft=0.0, w_feat=0.0, tau=2.0, tau_feat=1.0)
    assert ce_only.item() == pytest.approx(ce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="teacher_logits"):
        student_loss(logits, labels, None, None, None, w_soft=1.0, w_feat=0.0, tau=2.0, tau_feat=1.0)


def test_student_loss_all_rows_unlabelled_is_zero_not_nan() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = student_loss(logits, torch.full((2,), -100), None, None, None, 0.0, 0.0, 2.0, 1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_student_loss_gradient_reaches_student_only() -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    fs = torch.randn(4, 5, requires_grad=True)
    ft = torch.randn(4, 5, requires_grad=True)
    loss = student_loss(logits, torch.tensor([0, 1, 2, 0]), teacher, fs, ft, 1.0, 1.0, 2.0, 1.0)
    loss.backward()
    assert teacher.grad is None and ft.grad is None
    assert logits.grad.abs().sum() > 0 and fs.grad.abs().sum() > 0


# ------------------------------------------------------------------ stage2_loss
def _output(B: int, L: int, C: int, d: int, seed: int = 0) -> MAGTOutput:
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g).requires_grad_(True)  # noqa: E731
    return MAGTOutput(t(B, L, C), t(B, L, C), t(B, L, C), t(B, L, d), t(B, L, d), t(B, L, d))


def test_stage2_loss_matches_formula_on_real_labelled_rows() -> None:
    out = _output(2, 3, 4, 6)
    labels = torch.tensor([[0, 3, -100], [1, 2, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])  # [1, 2] is padding
    total, parts = stage2_loss(out, labels, mask, 0.5, 0.25, tau=2.0, use_feat=True, tau_feat=1.0)
    rows = [(0, 0), (0, 1), (1, 0), (1, 1)]
    pick = lambda x: torch.stack([x[b, i] for b, i in rows])  # noqa: E731
    lab = torch.tensor([0, 3, 1, 2])
    y, ya, yv = pick(out.logits), pick(out.logits_audio), pick(out.logits_video)
    tp, ap, vp = pick(out.t_prime), pick(out.a_prime), pick(out.v_prime)
    want = (
        F.cross_entropy(y, lab)
        + 0.5 * (F.cross_entropy(ya, lab) + pearson_soft_loss(ya, y) + relation_kl_loss(tp, ap))
        + 0.25 * (F.cross_entropy(yv, lab) + pearson_soft_loss(yv, y) + relation_kl_loss(tp, vp))
    )
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    assert parts["total"] == pytest.approx(want.item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(F.cross_entropy(y, lab).item(), rel=1e-5)
    assert parts["audio_feat"] > 0 and parts["video_soft"] > 0


def test_stage2_loss_ignores_padding_and_teacher_side_gets_no_aux_gradient() -> None:
    out = _output(1, 4, 3, 5, seed=1)
    labels = torch.tensor([[2, 0, 1, 1]])
    mask = torch.tensor([[True, True, False, False]])
    total, _ = stage2_loss(out, labels, mask, 1.0, 1.0, tau=2.0, use_feat=True, tau_feat=1.0)
    total.backward()
    # padding rows receive no gradient at all
    for x in (out.logits, out.logits_audio, out.logits_video, out.a_prime, out.v_prime):
        assert x.grad[0, 2:].abs().sum() == 0
        assert x.grad[0, :2].abs().sum() > 0
    # the fused logits and t' only learn from CE(y): the auxiliary terms treat them as a fixed teacher
    y = out.logits.detach()[0, :2].clone().requires_grad_(True)
    F.cross_entropy(y, labels[0, :2]).backward()
    assert torch.allclose(out.logits.grad[0, :2], y.grad, atol=1e-7)
    assert out.t_prime.grad is None or out.t_prime.grad.abs().sum() == 0


def test_stage2_loss_without_feature_term_and_zero_weights() -> None:
    out = _output(1, 3, 3, 4, seed=2)
    labels = torch.tensor([[0, 1, 2]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    total, parts = stage2_loss(out, labels, mask, 0.0, 0.0, tau=2.0, use_feat=True, tau_feat=1.0)
    assert total.item() == pytest.approx(F.cross_entropy(out.logits[0], labels[0]).item(), rel=1e-6)
    assert parts["audio_ce"] == 0.0 and parts["video_feat"] == 0.0
    _, parts = stage2_loss(out, labels, mask, 1.0, 1.0, tau=2.0, use_feat=False, tau_feat=1.0)
    assert parts["audio_feat"] == 0.0 and parts["audio_soft"] > 0


def test_stage2_loss_no_labelled_rows_is_zero() -> None:
    out = _output(1, 2, 3, 4)
    total, parts = stage2_loss(
        out, torch.tensor([[-100, 1]]), torch.tensor([[True, False]]), 0.1, 0.1, 2.0, True, 1.0
    )
    total.backward()
    assert total.item() == 0.0 and parts["total"] == 0.0
    assert torch.isfinite(out.logits.grad).all()
