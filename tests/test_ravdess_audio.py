"""Held-out-actor evaluation of the audio head on small random vectors (no Whisper)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.studies import ravdess_audio as ra
from training.studies.ravdess_audio import ClipVectors, HeadSettings, evaluate_held_out, split_by_actor

SETTINGS = HeadSettings(feature_dim=16, epochs=8, batch_size=16, lr=1e-2)


def _clips(signal: bool, per_actor: int = 16, dim: int = 24, seed: int = 0) -> ClipVectors:
    rng = np.random.default_rng(seed)
    actors = np.repeat(np.arange(1, 21), per_actor)
    y8 = rng.integers(0, 8, size=actors.size)
    x = rng.normal(size=(actors.size, dim)).astype(np.float32)
    if signal:
        x[np.arange(actors.size), y8] += 4.0  # class k lights up dimension k
    y7 = np.where(y8 == 1, 4, y8)  # any fixed 8 -> 7 folding keeps the signal learnable
    y7 = np.where(y7 > 1, y7 - 1, y7)
    return ClipVectors(vectors=torch.from_numpy(x), actors=actors, labels={"ravdess": y8, "meld": y7})


def test_split_by_actor_is_disjoint_and_complete() -> None:
    actors = np.repeat(np.arange(1, 21), 3)
    rows = split_by_actor(actors)
    seen = {k: set(actors[v].tolist()) for k, v in rows.items()}
    assert seen == {"fit": set(range(1, 15)), "select": {15, 16}, "test": set(range(17, 21))}
    assert sum(v.size for v in rows.values()) == actors.size
    with pytest.raises(ValueError, match="both"):
        split_by_actor(actors, fit=range(1, 16), select=(15, 16))
    with pytest.raises(ValueError, match="no clips"):
        split_by_actor(np.arange(1, 15))


def test_test_actors_never_reach_training_or_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _clips(signal=True)
    test_rows = {tuple(r) for r in data.vectors[np.isin(data.actors, ra.TEST_ACTORS)].numpy().round(5).tolist()}
    seen = []
    real = ra.train_head

    def spy(x_fit, y_fit, x_sel, y_sel, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((x_fit, x_sel))
        return real(x_fit, y_fit, x_sel, y_sel, *args, **kwargs)

    monkeypatch.setattr(ra, "train_head", spy)
    evaluate_held_out(data, seeds=(0,), settings=SETTINGS)
    assert len(seen) == 2  # one head per label space
    for x_fit, x_sel in seen:
        used = {tuple(r) for r in torch.cat([x_fit, x_sel]).numpy().round(5).tolist()}
        assert not used & test_rows


def test_learnable_signal_is_learned_and_noise_is_not() -> None:
    good = evaluate_held_out(_clips(signal=True), seeds=(0, 1), settings=SETTINGS)
    noise = evaluate_held_out(_clips(signal=False), seeds=(0,), settings=SETTINGS)
    assert good["clips"] == {"fit": 14 * 16, "select": 32, "test": 64}
    for space, n in (("ravdess", 8), ("meld", 7)):
        r = good["label_spaces"][space]
        assert len(r["classes"]) == n and [x["seed"] for x in r["runs"]] == [0, 1]
        assert r["test_accuracy"]["mean"] > 0.85
        assert 1 <= r["runs"][0]["epoch"] <= SETTINGS.epochs
        assert noise["label_spaces"][space]["test_accuracy"]["mean"] < 0.4


def test_folds_cover_every_actor_once_and_never_train_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _clips(signal=True, per_actor=8)
    seen: list[tuple[set, set]] = []
    real = ra.train_head
    actor_of = {tuple(r): int(a) for r, a in zip(data.vectors.numpy().round(5).tolist(), data.actors)}

    def spy(x_fit, y_fit, x_sel, y_sel, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(({actor_of[tuple(r)] for r in x_fit.numpy().round(5).tolist()},
                     {actor_of[tuple(r)] for r in x_sel.numpy().round(5).tolist()}))
        return real(x_fit, y_fit, x_sel, y_sel, *args, **kwargs)

    monkeypatch.setattr(ra, "train_head", spy)
    cv = ra.evaluate_folds(data, seeds=(0,), settings=SETTINGS)
    r = cv["label_spaces"]["meld"]
    tested = [a for f in r["folds"] for a in f["test_actors"]]
    assert sorted(tested) == list(range(1, 21)) and all(f["clips"] == 32 for f in r["folds"])
    for (fit, sel), fold in zip(seen[:5], cv["label_spaces"]["ravdess"]["folds"]):  # first label space's heads
        assert not (fit | sel) & set(fold["test_actors"]) and not fit & sel
    assert r["accuracy"]["mean"] > 0.8


def test_actor_normalisation_takes_its_prior_from_the_fit_actors_only() -> None:
    data = _clips(signal=True, per_actor=4)
    x = data.vectors.float()
    fit = np.flatnonzero(data.actors <= 10)
    out = ra.normalize_actors(x, data.actors, fit, weight=2.0, seed=0)
    moved = x.clone()
    moved[data.actors > 10] += 50.0  # scored actors far away: the prior must not move
    out2 = ra.normalize_actors(moved, data.actors, fit, weight=2.0, seed=0)
    assert torch.allclose(out[data.actors <= 10], out2[data.actors <= 10])
    cv = ra.evaluate_folds(data, seeds=(0,), settings=SETTINGS, speaker_norm=2.0)
    assert cv["speaker_norm"] == 2.0 and cv["label_spaces"]["meld"]["accuracy"]["mean"] > 0.6


def test_augmented_copies_join_the_fit_rows_of_their_own_actors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _clips(signal=True, per_actor=4)
    aug = _clips(signal=True, per_actor=16, seed=1)
    aug.copies = np.zeros(aug.actors.size, dtype=int)
    aug.vectors = aug.vectors + 1000.0  # marks augmented rows
    seen: list[tuple[int, int, int, float]] = []  # fit rows, augmented among them, augmented in select, their mean
    real = ra.train_head

    def spy(x_fit, y_fit, x_sel, y_sel, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((len(x_fit), int((x_fit.mean(1) > 500).sum()), int((x_sel.mean(1) > 500).sum()),
                     float(x_fit[14 * 4:].mean())))  # the augmented rows follow the 14 x 4 clean ones
        return real(x_fit, y_fit, x_sel, y_sel, *args, **kwargs)

    monkeypatch.setattr(ra, "train_head", spy)
    cv = ra.evaluate_folds(data, seeds=(0,), settings=SETTINGS, augmented=aug)
    assert cv["augmented_rows"] == aug.actors.size
    for total, augmented, in_select, _ in seen:
        assert augmented == 14 * 16 and total == 14 * 4 + 14 * 16 and in_select == 0  # 14 fit actors
    seen.clear()
    ra.evaluate_folds(data, seeds=(0,), settings=SETTINGS, augmented=aug, speaker_norm=2.0)
    # each copy is a session of its own, normalised by its own running mean: most of its channel offset is gone
    assert all(total == 280 and mean < 400 for total, _, _, mean in seen), seen
