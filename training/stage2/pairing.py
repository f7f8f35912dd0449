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
from typing import Mapping, Sequence, Union

import numpy as np

from magtkd_stream.names import MODALITIES
from training.stage2.features import IGNORE_LABEL, DialogueFeatures



def labelled_vectors(dialogues: Sequence[DialogueFeatures], kinds: Mapping[str, str],
                     by_source: bool = False) -> dict[tuple, np.ndarray]:
    """(modality, label) -> (N, D) stack of present, labelled vectors of the kind MAGT reads.

    With by_source the key is (source, modality, label): composed conversations
    draw each cue from the source that carries it.
    """
    acc: dict[tuple, list[np.ndarray]] = {}
    for d in dialogues:
        for m in MODALITIES:
            arr = d.feats.get(kinds[m])
            if arr is None:
                continue
            for i in np.flatnonzero(d.present[m] & (d.labels != IGNORE_LABEL)):
                key = (d.source, m, int(d.labels[i])) if by_source else (m, int(d.labels[i]))
                acc.setdefault(key, []).append(arr[i])
    return {k: np.stack(v) for k, v in acc.items()}


def _pools(dialogues: Sequence[DialogueFeatures], kinds: Mapping[str, str]) -> dict[str, dict[int, np.ndarray]]:
    """modality -> label -> (N, D) stack of present, labelled vectors of the kind MAGT reads."""
    pools: dict[str, dict[int, np.ndarray]] = {m: {} for m in MODALITIES}
    for (m, y), stack in labelled_vectors(dialogues, kinds).items():
        pools[m][y] = stack
    return pools


PerModality = Union[float, Mapping[str, float]]


def per_modality(value: PerModality, name: str) -> dict[str, float]:
    """A probability for each modality from one number or a {modality: number} mapping (missing -> 0)."""
    out = {m: float(value) for m in MODALITIES} if isinstance(value, (int, float)) else \
        {m: float(value.get(m, 0.0)) for m in MODALITIES}
    if not isinstance(value, (int, float)):
        unknown = sorted(set(value) - set(MODALITIES))
        if unknown:
            raise ValueError(f"pairing {name}: unknown modalities {unknown}; expected text, audio, video")
    bad = {m: v for m, v in out.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"pairing {name} must be in [0, 1], got {bad}")
    return out


def pair_modalities(
    dialogues: Sequence[DialogueFeatures],
    kinds: Mapping[str, str],
    feature_dim: int,
    prob: PerModality,
    agree: PerModality,
    rng: np.random.Generator,
) -> list[DialogueFeatures]:
    """Copies of `dialogues` in which absent modalities of labelled utterances are filled by pairing.

    Each absent (utterance, modality m) is filled with probability `prob[m]` from
    the pool of that modality; the lent vector has the utterance's own class with
    probability `agree[m]`, else a class drawn uniformly from those in the pool.
    Per-modality values say how far each modality should be trusted: a face lent
    with low agreement teaches MAGT that a face only hints at what is said.
    """
    probs, agrees = per_modality(prob, "prob"), per_modality(agree, "agree")
    if not any(probs.values()):
        return list(dialogues)
    pools = _pools(dialogues, kinds)
    out: list[DialogueFeatures] = []
    for d in dialogues:
        feats, present = dict(d.feats), dict(d.present)
        for m in MODALITIES:
            pool = pools[m]
            if not pool:
                continue
            if probs[m] == 0.0:
                continue
            fill = ~d.present[m] & (d.labels != IGNORE_LABEL) & (rng.random(len(d)) < probs[m])
            if not fill.any():
                continue
            kind = kinds[m]
            arr = feats.get(kind)
            arr = np.zeros((len(d), feature_dim), np.float32) if arr is None else arr.copy()
            has = present[m].copy()
            classes = sorted(pool)
            for i in np.flatnonzero(fill):
                y = int(d.labels[i])
                if y not in pool or rng.random() >= agrees[m]:
                    y = classes[int(rng.integers(len(classes)))]
                arr[i] = pool[y][int(rng.integers(len(pool[y])))]
                has[i] = True
            feats[kind], present[m] = arr, has
        out.append(dataclasses.replace(d, feats=feats, present=present))
    return out
