"""Cross-source modality pairing for stage 2 when the training sources are single-modality.

The lite recipe trains on MELD (text), RAVDESS (speech) and FER2013 (faces):
no utterance has all three modalities, so MAGT would never see a text, a voice
and a face together and would learn "copy whichever modality is present".
Pairing lends an absent modality of a labelled training utterance a vector of
that modality from another utterance of the same class (with probability
`agree`; otherwise of a random class, since real modalities often disagree).
It is redrawn every epoch from a seeded generator and never touches dev or test.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from training.features import IGNORE_LABEL, DialogueFeatures

MODALITIES = ("text", "audio", "video")


def _pools(dialogues: Sequence[DialogueFeatures], kinds: Mapping[str, str]) -> dict[str, dict[int, np.ndarray]]:
    """modality -> label -> (N, D) stack of present, labelled vectors of the kind MAGT reads."""
    pools: dict[str, dict[int, list[np.ndarray]]] = {m: {} for m in MODALITIES}
    for d in dialogues:
        for m in MODALITIES:
            arr = d.feats.get(kinds[m])
            if arr is None:
                continue
            for i in np.flatnonzero(d.present[m] & (d.labels != IGNORE_LABEL)):
                pools[m].setdefault(int(d.labels[i]), []).append(arr[i])
    return {m: {y: np.stack(v) for y, v in by.items()} for m, by in pools.items()}


def pair_modalities(
    dialogues: Sequence[DialogueFeatures],
    kinds: Mapping[str, str],
    feature_dim: int,
    prob: float,
    agree: float,
    rng: np.random.Generator,
) -> list[DialogueFeatures]:
    """Copies of `dialogues` in which absent modalities of labelled utterances are filled by pairing.

    Each absent (utterance, modality) is filled with probability `prob` from the
    pool of that modality; the lent vector has the utterance's own class with
    probability `agree`, else a class drawn uniformly from those in the pool.
    """
    if not 0.0 <= prob <= 1.0 or not 0.0 <= agree <= 1.0:
        raise ValueError(f"pairing prob and agree must be in [0, 1], got {prob} and {agree}")
    if prob == 0.0:
        return list(dialogues)
    pools = _pools(dialogues, kinds)
    out: list[DialogueFeatures] = []
    for d in dialogues:
        feats, present = dict(d.feats), dict(d.present)
        for m in MODALITIES:
            pool = pools[m]
            if not pool:
                continue
            fill = ~d.present[m] & (d.labels != IGNORE_LABEL) & (rng.random(len(d)) < prob)
            if not fill.any():
                continue
            kind = kinds[m]
            arr = feats.get(kind)
            arr = np.zeros((len(d), feature_dim), np.float32) if arr is None else arr.copy()
            has = present[m].copy()
            classes = sorted(pool)
            for i in np.flatnonzero(fill):
                y = int(d.labels[i])
                if y not in pool or rng.random() >= agree:
                    y = classes[int(rng.integers(len(classes)))]
                arr[i] = pool[y][int(rng.integers(len(pool[y])))]
                has[i] = True
            feats[kind], present[m] = arr, has
        out.append(dataclasses.replace(d, feats=feats, present=present))
    return out
