"""Composed multimodal training conversations, modality dropout, and temperature calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magtkd_stream.labels import MELD_LABELS
from training.stage2.calibration import calibrate, expected_calibration_error, fit_temperature, softmax
from training.stage2.features import DialogueFeatures
from training.stage2.paired_dialogues import CUES, ComposeSettings, compose_dialogues, cue_of, drop_modalities

KINDS = {"text": "text", "audio": "audio", "video": "video"}
D = 4
NEUTRAL = MELD_LABELS.index("neutral")


def _source(source: str, modalities: tuple[str, ...], n: int, split: str, tag: float) -> list[DialogueFeatures]:
    """One-utterance dialogues of every label; each vector is (tag, label, row, 0) so its origin can be read back."""
    out = []
    for i in range(n):
        y = i % len(MELD_LABELS)
        feats = {m: np.array([[tag, y, i, 0]], np.float32) for m in modalities}
        present = {m: np.array([m in modalities]) for m in ("text", "audio", "video")}
        out.append(DialogueFeatures(f"{source}{i}", split, source, [f"{source}/{i}"], np.zeros(1, np.int64),
                                    np.array([y]), feats, present))
    return out


def _split(split: str, tag: float) -> list[DialogueFeatures]:
    return (_source("meld", ("text",), 28, split, tag) + _source("ravdess", ("text", "audio"), 28, split, tag)
            + _source("fer2013", ("video",), 28, split, tag))


def test_composed_utterances_carry_their_label_in_the_cued_modalities_only() -> None:
    dialogues = compose_dialogues(_split("train", 1.0), KINDS, MELD_LABELS, D, ComposeSettings(dialogues=50),
                                  np.random.default_rng(0))
    assert len(dialogues) == 50
    seen = set()
    for d in dialogues:
        assert 6 <= len(d) <= 10 and d.source == "composed"
        for i, uid in enumerate(d.uids):
            cue = cue_of(uid)
            seen.add(cue)
            y = int(d.labels[i])
            assert (y == NEUTRAL) == (cue == "none")
            for m in ("text", "audio", "video"):
                if m in CUES[cue]:
                    assert d.present[m][i] and d.feats[m][i, 1] == y  # drawn from an utterance of that label
                elif d.present[m][i]:
                    assert d.feats[m][i, 1] == NEUTRAL  # a modality that does not carry the cue is plain
    assert {"voice", "face", "words", "none"} <= seen


def test_composition_is_seeded_and_never_leaves_its_split() -> None:
    train, dev = _split("train", 1.0), _split("dev", 2.0)
    a = compose_dialogues(dev, KINDS, MELD_LABELS, D, ComposeSettings(dialogues=20), np.random.default_rng(3), "dev")
    b = compose_dialogues(dev, KINDS, MELD_LABELS, D, ComposeSettings(dialogues=20), np.random.default_rng(3), "dev")
    assert all(x.uids == y.uids and np.array_equal(x.feats["audio"], y.feats["audio"]) for x, y in zip(a, b))
    for d in a:  # a dev conversation holds only dev vectors (tag 2.0), never one from train
        for m in ("text", "audio", "video"):
            assert set(d.feats[m][d.present[m], 0].tolist()) <= {2.0}
    t = compose_dialogues(train, KINDS, MELD_LABELS, D, ComposeSettings(dialogues=20), np.random.default_rng(3))
    assert all(set(d.feats["text"][d.present["text"], 0].tolist()) <= {1.0} for d in t)


def test_modality_dropout_always_keeps_one_modality() -> None:
    d = compose_dialogues(_split("train", 1.0), KINDS, MELD_LABELS, D, ComposeSettings(dialogues=30),
                          np.random.default_rng(1))
    dropped = drop_modalities(d, 0.9, np.random.default_rng(0))
    before = sum(int(x.present[m].sum()) for x in d for m in KINDS)
    after = sum(int(x.present[m].sum()) for x in dropped for m in KINDS)
    assert after < 0.5 * before
    for x, y in zip(d, dropped):
        had = np.stack([x.present[m] for m in KINDS]).any(axis=0)
        has = np.stack([y.present[m] for m in KINDS]).any(axis=0)
        assert np.array_equal(had, has)  # an utterance that had a modality keeps at least one
        for m in KINDS:
            assert not (y.present[m] & ~x.present[m]).any()  # nothing absent becomes present
    assert drop_modalities(d, 0.0, np.random.default_rng(0)) == list(d)


def test_temperature_fit_recovers_overconfidence_and_lowers_ece() -> None:
    rng = np.random.default_rng(0)
    n, c = 4000, 7
    true_logits = rng.normal(0, 1.5, size=(n, c))
    y = np.array([rng.choice(c, p=p) for p in softmax(true_logits)])
    over = true_logits * 3.0  # a model three times too sure of itself
    t = fit_temperature(over, y)
    assert 2.5 < t < 3.5, t
    report = calibrate(over, y)
    assert report["ece_after"] < 0.5 * report["ece_before"]
    assert (softmax(over, t).argmax(1) == over.argmax(1)).all()  # calibration never changes the label
    assert expected_calibration_error(np.eye(c)[y], y) == pytest.approx(0.0)
    assert fit_temperature(np.zeros((0, c)), np.zeros(0, np.int64)) == 1.0
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, c)), np.zeros(4, np.int64))


def test_fusion_model_applies_checkpoint_temperatures(tmp_path) -> None:
    from magtkd_stream.model.checkpoint import load_checkpoint, save_checkpoint
    from magtkd_stream.config import load_config
    from magtkd_stream.model.fusion import FusionModel

    cfg = load_config("tiny")
    dims = {"text": 8, "audio": 6, "video": 5}
    torch.manual_seed(0)
    model = FusionModel(cfg, dims, len(MELD_LABELS))
    modules = {"magt": model.magt, **{f"{m}.head": model.heads[m] for m in dims}}
    plain = save_checkpoint(tmp_path / "a.safetensors", modules, cfg, MELD_LABELS, extra={"encoder_dims": dims})
    hot = save_checkpoint(tmp_path / "b.safetensors", modules, cfg, MELD_LABELS,
                          extra={"encoder_dims": dims, "temperature": {"audio": 2.0, "fused": 4.0}})
    a, b = FusionModel.from_checkpoint(load_checkpoint(plain)), FusionModel.from_checkpoint(load_checkpoint(hot))
    x = torch.randn(3, 6)
    _, za = a.head("audio", x)
    _, zb = b.head("audio", x)
    torch.testing.assert_close(zb, za / 2.0)
    assert b.temperature["text"] == 1.0
