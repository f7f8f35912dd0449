"""Cross-source modality pairing lends absent modalities from same-class utterances of other sources."""

from __future__ import annotations

import numpy as np
import pytest

from training.stage2.features import IGNORE_LABEL, DialogueFeatures
from training.stage2.pairing import pair_modalities

KINDS = {"text": "text", "audio": "audio", "video": "video"}
D = 4


def _dialogue(did: str, labels: list[int], **present: bool) -> DialogueFeatures:
    n = len(labels)
    feats, mask = {}, {}
    for m in ("text", "audio", "video"):
        on = present.get(m, False)
        mask[m] = np.full(n, on)
        if on:  # each vector encodes (modality, label) so the test can tell where it came from
            code = {"text": 10, "audio": 20, "video": 30}[m]
            feats[m] = np.stack([np.full(D, code + y, np.float32) for y in labels])
    return DialogueFeatures(did, "train", did, [f"{did}/{i}" for i in range(n)], np.zeros(n, np.int64),
                            np.array(labels, np.int64), feats, mask)


def _sources() -> list[DialogueFeatures]:
    text = _dialogue("meld", [0, 1, 2, IGNORE_LABEL], text=True)
    audio = [_dialogue(f"rav{y}", [y], audio=True) for y in (0, 1, 2)]
    video = [_dialogue(f"fer{y}", [y], video=True) for y in (0, 1, 2)]
    return [text, *audio, *video]


def test_full_agreement_lends_same_class_vectors_and_keeps_originals() -> None:
    src = _sources()
    out = pair_modalities(src, KINDS, D, prob=1.0, agree=1.0, rng=np.random.default_rng(0))
    meld = out[0]
    assert meld.present["audio"][:3].all() and meld.present["video"][:3].all()
    assert not meld.present["audio"][3], "unlabelled utterances are never paired"
    assert meld.feats["audio"][:3, 0].tolist() == [20, 21, 22]
    assert meld.feats["video"][:3, 0].tolist() == [30, 31, 32]
    fer1 = out[5]
    assert fer1.present["text"][0] and fer1.feats["text"][0, 0] == 11 and fer1.feats["video"][0, 0] == 31
    assert not src[0].present["audio"].any() and "audio" not in src[0].feats, "inputs are not modified"


def test_zero_probability_is_identity_and_disagreement_happens() -> None:
    src = _sources()
    assert pair_modalities(src, KINDS, D, 0.0, 1.0, np.random.default_rng(0)) == src
    lent = []
    for seed in range(40):
        meld = pair_modalities(src, KINDS, D, 1.0, 0.0, np.random.default_rng(seed))[0]
        lent += [int(v) - 20 for v in meld.feats["audio"][:3, 0]]
    assert lent != [0, 1, 2] * 40 and set(lent) == {0, 1, 2}


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="prob"):
        pair_modalities(_sources(), KINDS, D, 1.5, 0.5, np.random.default_rng(0))


def test_per_modality_settings_lend_faces_but_never_transcripts() -> None:
    src = _sources()
    out = pair_modalities(src, KINDS, D, prob={"audio": 1.0, "video": 1.0}, agree={"audio": 1.0, "video": 0.0},
                          rng=np.random.default_rng(0))
    fer1 = out[5]
    assert not fer1.present["text"].any(), "a transcript is never lent when its probability is 0"
    assert fer1.present["audio"][0] and fer1.feats["audio"][0, 0] == 21
    lent = []
    for seed in range(30):
        meld = pair_modalities(src, KINDS, D, {"video": 1.0}, {"video": 0.0}, np.random.default_rng(seed))[0]
        assert not meld.present["audio"].any()
        lent += [int(v) - 30 for v in meld.feats["video"][:3, 0]]
    assert set(lent) == {0, 1, 2} and lent != [0, 1, 2] * 30, "agree 0: faces of any class"


def test_stage2_config_pairing_overrides_and_their_errors() -> None:
    from magtkd_stream.config import ConfigError, load_config

    cfg = load_config("configs/train_lite.yaml")
    prob, agree = cfg.train.stage2.pairing()
    assert prob["text"] == 0.0 and prob["video"] == cfg.train.stage2.pair_prob
    assert agree["video"] < agree["audio"]
    with pytest.raises(ConfigError, match="pair_agree_by.face"):
        load_config("configs/train_lite.yaml", overrides=["train.stage2.pair_agree_by={face: 0.2}"])
    with pytest.raises(ValueError, match="unknown modalities"):
        pair_modalities(_sources(), KINDS, D, {"face": 1.0}, 0.5, np.random.default_rng(0))
