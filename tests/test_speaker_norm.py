"""Per-speaker running normalisation: causal, per speaker, the same in training, in served data and in the service."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magtkd_stream.model.fusion import SessionWindow
from magtkd_stream.model.speaker_norm import SpeakerNormalizer, normalize_sequence
from training.data.types import Dialogue, Utterance
from training.stage1.cache import Encoded, normalize_by_speaker, prior_of, speaker_order
from training.stage1.inputs import UttRef

MU = np.zeros(3, np.float32)


def test_first_utterance_is_untouched_and_later_ones_lose_the_speakers_mean() -> None:
    norm = SpeakerNormalizer(MU, prior_weight=1.0)
    voice = np.array([5.0, 0.0, 0.0], np.float32)
    first = norm("ann", voice + [0, 1, 0])
    assert np.allclose(first, voice + [0, 1, 0])  # nothing known about ann yet: the prior only
    second = norm("ann", voice + [0, 0, 1])
    assert np.allclose(second, voice + [0, 0, 1] - (voice + [0, 1, 0]) / 2)  # (1 earlier + 1 prior) / 2
    assert np.allclose(norm("bob", voice), voice)  # another speaker has statistics of his own


def test_the_normaliser_is_causal() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    speakers = ["a", "b", "a", "a", "b", "c", "a", "b", "c", "a", "a", "b"]
    prior = SpeakerNormalizer(MU, 2.0)
    full = normalize_sequence(prior, x, speakers)
    for n in range(1, len(x)):
        prefix = normalize_sequence(prior, x[:n], speakers[:n])
        assert np.allclose(prefix, full[:n])  # a later utterance never changes an earlier vector
    changed = x.copy()
    changed[-1] += 100.0
    assert np.allclose(normalize_sequence(prior, changed, speakers)[:-1], full[:-1])


def test_peek_leaves_statistics_alone_and_bad_input_is_named() -> None:
    norm = SpeakerNormalizer(MU, 3.0)
    norm("a", np.ones(3))
    before = norm.speaker_mean("a").copy()
    norm.peek("a", np.full(3, 9.0))
    assert np.allclose(norm.speaker_mean("a"), before)
    with pytest.raises(ValueError, match="width 2"):
        norm("a", np.ones(2))
    with pytest.raises(ValueError, match="prior_weight"):
        SpeakerNormalizer(MU, 0.0)
    back = SpeakerNormalizer.from_dict(norm.to_dict())
    assert back.prior_weight == 3.0 and np.allclose(back.prior_mean, MU) and back.speaker_mean("a") is back.prior_mean
    with pytest.raises(ValueError, match="needs 'mean'"):
        SpeakerNormalizer.from_dict({"prior_weight": 1})


def test_session_window_normalises_committed_utterances_only() -> None:
    w = SessionWindow(4, 8, {"audio": SpeakerNormalizer(MU, 1.0)})
    v = np.array([2.0, 0.0, 0.0], np.float32)
    assert np.allclose(w.normalize("A", "audio", v, commit=False), v)
    assert np.allclose(w.normalize("A", "audio", v, commit=True), v)  # the interim did not count
    assert np.allclose(w.normalize("A", "audio", v, commit=True), v / 2)
    assert w.normalize("A", "text", v, commit=True) is v  # modalities without a normaliser pass through


def _refs() -> list[UttRef]:
    dialogues = [Dialogue(f"d{k}", "train", [Utterance(f"d{k}u0", "actor01" if k % 2 else "actor02", "x", 0)],
                          "ravdess") for k in range(6)]
    return [UttRef(d, 0) for d in dialogues]


def test_training_normalises_each_speaker_in_a_seeded_session_order() -> None:
    refs = _refs()
    order = speaker_order(refs, seed=0)
    assert sorted(order) == list(range(6)) and order == speaker_order(refs, seed=0) != speaker_order(refs, seed=1)
    vec = torch.arange(18, dtype=torch.float32).reshape(6, 3)
    ok = torch.tensor([True, True, True, True, False, True])
    enc = Encoded(vec, ok)
    norm = prior_of(enc, 2.0)
    assert np.allclose(norm.prior_mean, vec[ok].mean(0).numpy())
    out = normalize_by_speaker(enc, refs, norm, seed=0)
    expect = {}
    session = norm.fresh()
    for i in order:
        if ok[i]:
            expect[i] = session(refs[i].utt.speaker, vec[i].numpy())
    for i, e in expect.items():
        assert np.allclose(out.vectors[i].numpy(), e)
    assert torch.equal(out.vectors[4], vec[4])  # an absent row is neither changed nor counted


def test_a_checkpoint_carries_the_prior_to_the_service(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from magtkd_stream.model.checkpoint import load_checkpoint, save_checkpoint
    from magtkd_stream.config import load_config
    from magtkd_stream.model.fusion import FusionModel
    from magtkd_stream.labels import MELD_LABELS

    cfg = load_config("tiny")
    dims = {"text": 8, "audio": 6, "video": 4}
    model = FusionModel(cfg, dims, len(MELD_LABELS))
    modules = {"magt": model.magt, **{f"{m}.head": h for m, h in model.heads.items()}}
    prior = SpeakerNormalizer(np.arange(6, dtype=np.float32), 4.0).to_dict()
    path = save_checkpoint(tmp_path / "n.safetensors", modules, cfg, MELD_LABELS,
                           extra={"encoder_dims": dims, "speaker_norm": {"audio": prior}})
    loaded = FusionModel.from_checkpoint(load_checkpoint(path))
    norms = loaded.session_normalizers()
    assert set(norms) == {"audio"} and np.allclose(norms["audio"].prior_mean, np.arange(6))
    assert norms["audio"] is not loaded.session_normalizers()["audio"]  # fresh statistics per session
    bad = save_checkpoint(tmp_path / "b.safetensors", modules, cfg, MELD_LABELS,
                          extra={"encoder_dims": dims, "speaker_norm": {"audio": {"prior_weight": 4, "mean": [0.0]}}})
    with pytest.raises(ValueError, match="width 1"):
        FusionModel.from_checkpoint(load_checkpoint(bad))
