"""MAGT fusion model: shapes, masking of missing modalities and padding, causal windows, gates, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from magtkd_stream.model.agt import AGTBlock, AGTLayer, attention_mask
from magtkd_stream.config import MAGTConfig
from magtkd_stream.model.losses import stage2_loss
from magtkd_stream.model.magt import MAGT, MAGTOutput, causal_window_mask


C = 5
FIELDS = ("logits", "logits_audio", "logits_video", "t_prime", "a_prime", "v_prime")


def tiny_cfg(**kw) -> MAGTConfig:
    base = dict(d_model=32, heads=4, d_ff=32, dropout=0.0, max_speakers=4, max_len=64, layers=1)
    base.update(kw)
    return MAGTConfig(**base)


def make_model(feature_dim: int = 24, seed: int = 0, **kw) -> MAGT:
    torch.manual_seed(seed)
    return MAGT(tiny_cfg(**kw), feature_dim, C).eval()


def make_batch(B: int, L: int, F: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "text": torch.randn(B, L, F, generator=g),
        "audio": torch.randn(B, L, F, generator=g),
        "video": torch.randn(B, L, F, generator=g),
        "speakers": torch.randint(0, 4, (B, L), generator=g),
        "pad_mask": torch.ones(B, L, dtype=torch.bool),
        "modality_mask": torch.ones(B, L, 3, dtype=torch.bool),
    }


def run(model: MAGT, batch: dict[str, torch.Tensor], window: int | None = None) -> MAGTOutput:
    with torch.no_grad():
        return model(**batch, window=window)


def clone(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in batch.items()}


# ------------------------------------------------------------------ helpers
def test_causal_window_mask_values() -> None:
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(causal_window_mask(5, 2, "cpu"), want)
    assert causal_window_mask(4, 0, "cpu").all()
    with pytest.raises(ValueError, match="window"):
        causal_window_mask(3, -1, "cpu")


# ------------------------------------------------------------------ shapes
COMBOS = [c for c in itertools.product([False, True], repeat=3) if any(c)]


@pytest.mark.parametrize("feature_dim", [24, 32])
@pytest.mark.parametrize("window", [0, 2])
def test_shapes_for_every_modality_combination_with_padding(feature_dim: int, window: int) -> None:
    model = make_model(feature_dim)
    assert isinstance(model.proj[0], torch.nn.Identity) == (feature_dim == 32)
    for combo in COMBOS:
        batch = make_batch(2, 5, feature_dim)
        batch["pad_mask"][1, 3:] = False
        batch["modality_mask"][:] = torch.tensor(combo)
        out = run(model, batch, window)
        for name in FIELDS[:3]:
            assert getattr(out, name).shape == (2, 5, C), (combo, name)
        for name in FIELDS[3:]:
            assert getattr(out, name).shape == (2, 5, 32), (combo, name)
        for name in FIELDS:
            assert torch.isfinite(getattr(out, name)).all(), (combo, name)


# ------------------------------------------------------------------ masking
@pytest.mark.parametrize("window", [0, 3])
def test_masked_modality_values_are_never_read(window: int) -> None:
    model = make_model()
    batch = make_batch(2, 6)
    batch["modality_mask"][0, [1, 4], 2] = False  # video absent at two utterances
    batch["modality_mask"][1, 2, 1] = False  # audio absent at one
    ref = run(model, batch, window)
    changed = clone(batch)
    changed["video"][0, 1] = 100.0
    changed["video"][0, 4] = float("nan")
    changed["audio"][1, 2] = -7.0
    out = run(model, changed, window)
    for name in FIELDS:
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    # the same values where the modality is present do matter
    changed["video"][0, 0] = 100.0
    assert not torch.allclose(run(model, changed, window).logits[0], ref.logits[0])


@pytest.mark.parametrize("window", [0, 3])
def test_padding_positions_are_never_read(window: int) -> None:
    model = make_model()
    batch = make_batch(2, 6)
    batch["pad_mask"][1, 4:] = False
    ref = run(model, batch, window)
    changed = clone(batch)
    for key in ("text", "audio", "video"):
        changed[key][1, 4:] = float("nan")
    changed["speakers"][1, 4:] = 999  # out of range, but padding: ignored
    changed["modality_mask"][1, 4:] = False
    out = run(model, changed, window)
    for name in FIELDS:
        assert torch.allclose(getattr(out, name)[:, :4], getattr(ref, name)[:, :4], atol=1e-6), name
        assert torch.equal(getattr(out, name)[0], getattr(ref, name)[0]), name


@pytest.mark.parametrize("window", [0, 2])
def test_padded_batch_equals_dialogue_alone(window: int) -> None:
    model = make_model(layers=2)
    long = make_batch(1, 7, seed=1)
    short = make_batch(1, 4, seed=2)
    short["modality_mask"][0, 1, 0] = False
    alone = run(model, short, window)
    batch = {k: torch.cat([long[k], torch.zeros_like(long[k])], 0) for k in long}
    for k in short:
        batch[k][1, :4] = short[k][0]
    batch["pad_mask"][1, 4:] = False
    together = run(model, batch, window)
    for name in FIELDS:
        assert torch.allclose(getattr(together, name)[1, :4], getattr(alone, name)[0], atol=1e-5), name


def test_whole_modality_absent_gives_finite_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    model = MAGT(tiny_cfg(dropout=0.1), 24, C).train()
    batch = make_batch(2, 5)
    batch["modality_mask"][..., 2] = False  # no video anywhere
    batch["modality_mask"][0, :3, 1] = False  # and no audio early in dialogue 0
    for window in (0, 2):
        out = model(**batch, window=window)
        loss, _ = stage2_loss(out, torch.zeros(2, 5, dtype=torch.long), batch["pad_mask"], 0.5, 0.5, 2.0, True, 1.0)
        model.zero_grad()
        loss.backward()
        assert all(torch.isfinite(getattr(out, n)).all() for n in FIELDS)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        assert model.missing.grad[2].abs().sum() > 0  # the stand-in for absent video is learned


def test_query_without_any_valid_key_gets_zero_attention() -> None:
    torch.manual_seed(0)
    block = AGTBlock(32, 4, 32, 0.0, layers=1).eval()
    anchor, emb = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    key_valid = torch.tensor([[False, False, True]])
    mask, has_key = attention_mask(key_valid, causal_window_mask(3, 0))
    assert has_key.tolist() == [[True, True, True]]
    mask, has_key = attention_mask(key_valid, causal_window_mask(3, 3))
    assert has_key.tolist() == [[False, False, True]]
    with torch.no_grad():
        a = block(anchor, torch.randn(1, 3, 32), emb, mask, has_key)
        b = block(anchor, torch.randn(1, 3, 32) * 50, emb, mask, has_key)
    assert torch.isfinite(a).all()
    assert torch.equal(a[0, :2], b[0, :2])  # no keys: the source cannot matter
    assert not torch.allclose(a[0, 2], b[0, 2])


# ------------------------------------------------------------------ context windows
def _perturb_utterance(batch: dict[str, torch.Tensor], k: int, what: str) -> dict[str, torch.Tensor]:
    changed = clone(batch)
    if what == "features":
        for key in ("text", "audio", "video"):
            changed[key][0, k] += 1.5
    else:
        changed["speakers"][0, k] = (changed["speakers"][0, k] + 1) % 4
    return changed


@pytest.mark.parametrize("what", ["features", "speaker"])
def test_causal_window_never_sees_the_future(what: str) -> None:
    model = make_model()
    batch = make_batch(1, 8, seed=3)
    ref = run(model, batch, 3)
    out = run(model, _perturb_utterance(batch, 4, what), 3)
    for name in FIELDS:
        assert torch.equal(getattr(out, name)[0, :4], getattr(ref, name)[0, :4]), name
    diff = (out.logits - ref.logits).abs().amax(-1)[0]  # (L,)
    assert (diff[4:7] > 1e-6).all()  # utterances 4, 5, 6 have 4 in their window
    assert diff[7] < 1e-6  # 7's window is 5..7


@pytest.mark.parametrize("layers", [1, 2])
def test_causal_window_forgets_utterances_older_than_w(layers: int) -> None:
    model = make_model(layers=layers)
    batch = make_batch(1, 9, seed=4)
    ref = run(model, batch, 3)
    out = run(model, _perturb_utterance(batch, 1, "features"), 3)
    diff = (out.logits - ref.logits).abs().amax(-1)[0]
    assert diff[0] == 0
    assert (diff[1:4] > 1e-6).all()  # 1 is inside the windows of 1, 2, 3
    assert torch.equal(out.logits[0, 4:], ref.logits[0, 4:])  # i - 3 >= 1: forgotten, also through a', v'


def test_whole_dialogue_lets_the_future_change_the_past() -> None:
    model = make_model()
    batch = make_batch(1, 6, seed=5)
    ref = run(model, batch, 0)
    out = run(model, _perturb_utterance(batch, 5, "features"), 0)
    assert (out.logits - ref.logits).abs()[0, 0].max() > 1e-6


def test_window_none_uses_config_window() -> None:
    model = make_model(window=2)
    batch = make_batch(1, 6, seed=6)
    assert torch.equal(run(model, batch).logits, run(model, batch, 2).logits)
    assert not torch.allclose(run(model, batch).logits, run(model, batch, 0).logits)


def test_last_w_utterances_alone_predict_what_the_whole_dialogue_predicts() -> None:
    # What a live service does: keep only the last W utterances and predict the newest one.
    model = make_model(layers=2)
    W, L = 3, 8
    batch = make_batch(1, L, seed=7)
    batch["modality_mask"][0, 5, 2] = False
    full = run(model, batch, W)
    for i in range(L):
        lo = max(0, i - W + 1)
        sub = {k: v[:, lo : i + 1] for k, v in batch.items()}
        alone = run(model, sub, W)
        for name in FIELDS:
            assert torch.allclose(getattr(alone, name)[0, -1], getattr(full, name)[0, i], atol=1e-5), (i, name)


# ------------------------------------------------------------------ speakers and inputs
def test_padding_speaker_index_is_its_own() -> None:
    model = make_model()
    emb = model.speaker
    assert emb.padding_idx == 4 and emb.num_embeddings == 5  # ids 0..3 are real
    real = emb.weight[:4]
    assert (real - emb.weight[4]).abs().amax(-1).min() > 0  # the padding row equals no real speaker row


def test_speaker_ids_out_of_range_are_rejected() -> None:
    model = make_model()
    batch = make_batch(1, 3)
    batch["speakers"][0, 1] = 4
    with pytest.raises(ValueError, match=r"max_speakers = 4"):
        run(model, batch)
    batch["speakers"][0, 1] = -1
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        run(model, batch)


def test_bad_inputs_name_what_is_wrong() -> None:
    model = make_model(max_len=6)
    batch = make_batch(1, 8)
    with pytest.raises(ValueError, match="max_len"):
        run(model, batch, 0)
    assert run(model, batch, 4).logits.shape == (1, 8, C)  # a window keeps the span short
    bad = clone(batch)
    bad["audio"] = bad["audio"][..., :10]
    with pytest.raises(ValueError, match="audio"):
        run(model, bad, 4)
    bad = clone(batch)
    bad["pad_mask"] = bad["pad_mask"].long()
    with pytest.raises(ValueError, match="pad_mask must be bool"):
        run(model, bad, 4)
    with pytest.raises(ValueError, match="window"):
        run(model, batch, -1)


# ------------------------------------------------------------------ gate and gradients
def test_gate_is_a_plain_sigmoid_that_can_close() -> None:
    torch.manual_seed(0)
    layer = AGTLayer(32, 4, 32, 0.0).eval()
    q, src = torch.randn(1, 4, 32), torch.randn(1, 4, 32)
    mask, has_key = attention_mask(torch.ones(1, 4, dtype=torch.bool), None)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(30.0)  # alpha ~ 1: the ungated H
        h = layer(q, src, mask, has_key)
        layer.gate.bias.fill_(-3.0)  # alpha = sigmoid(-3) ~ 0.047 (a ReLU inside would pin it at 0.5)
        gated = layer(q, src, mask, has_key)
    assert torch.allclose(gated, h * (1.0 / (1.0 + math.exp(3.0))), atol=1e-6)
    assert (gated.abs() < 0.5 * h.abs() + 1e-7).all()


@pytest.mark.parametrize("window", [0, 2])
def test_training_step_reaches_every_block(window: int) -> None:
    torch.manual_seed(0)
    model = MAGT(tiny_cfg(dropout=0.1, layers=2), 24, C).train()
    batch = make_batch(2, 5)
    batch["pad_mask"][1, 4] = False
    labels = torch.randint(0, C, (2, 5))
    out = model(**batch, window=window)
    loss, parts = stage2_loss(out, labels, batch["pad_mask"], 0.5, 0.5, 2.0, True, 1.0)
    loss.backward()
    assert math.isfinite(parts["total"])
    names = [n for n, _ in model.named_parameters()]
    for block in ("a2a", "t2a", "v2a", "v2v", "t2v", "a2v", "t2t", "a2t", "v2t"):
        assert any(n.startswith(f"blocks.{block}.layers.1.gate") for n in names)
    for name, p in model.named_parameters():
        if name == "missing":  # all modalities present: the stand-in is not used
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.blocks["v2t"].layers[0].gate.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.blocks["v2t"].layers[0].gate.weight)
