"""Multimodal training conversations composed from single-modality sources, for stage 2.

No corpus here has words, voice and face labelled together, and MAGT trained on
the single-modality sources alone learns "the transcript decides": on a plain
sentence with an angry voice it answers neutral. So each epoch stage 2 also
sees conversations composed the way the dev benchmark composes them: every
utterance has one emotion, carried by a chosen set of cues (voice, face,
words, or several); the modalities that do not carry it show neutral content
(a plain sentence, a neutral voice, a neutral face) or are absent. Vectors are
drawn, per cue, from the split's own sources: MELD lines for words, RAVDESS
clips for voice (and their plain sentence for words), FER2013 faces for faces.
A split only ever draws from itself, so dev conversations never contain a
train vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from magtkd_stream.names import MODALITIES
from training.stage2.features import IGNORE_LABEL, DialogueFeatures
from training.stage2.pairing import labelled_vectors

CUES: dict[str, tuple[str, ...]] = {  # cue type -> modalities that carry the emotion
    "voice": ("audio",), "face": ("video",), "words": ("text",),
    "voice+face": ("audio", "video"), "words+face": ("text", "video"), "voice+words": ("audio", "text"),
    "none": (),
}
SOURCE_OF = {"text": "meld", "audio": "ravdess", "video": "fer2013"}  # where each carried cue comes from


@dataclass(frozen=True)
class ComposeSettings:
    """How composed conversations look; the defaults follow the dev benchmark's mix."""

    dialogues: int = 400
    min_len: int = 6
    max_len: int = 10
    neutral_share: float = 0.2  # of utterances, as cue type "none"
    absent_face: float = 0.25  # a modality that does not carry the cue is absent this often ...
    absent_voice: float = 0.15  # ... (no face in view; a silent clip)


class Pools:
    """(source, modality, label) -> stack of present, labelled vectors of the kind MAGT reads."""

    def __init__(self, dialogues: Sequence[DialogueFeatures], kinds: Mapping[str, str]) -> None:
        self.vectors = labelled_vectors(dialogues, kinds, by_source=True)

    def has(self, source: str, modality: str, label: int) -> bool:
        return (source, modality, label) in self.vectors

    def draw(self, source: str, modality: str, label: int, rng: np.random.Generator) -> np.ndarray:
        stack = self.vectors[(source, modality, label)]
        return stack[int(rng.integers(len(stack)))]


def _plain_text(pools: Pools, neutral: int, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Words that carry nothing: RAVDESS's fixed sentences or a neutral MELD line."""
    options = [s for s in ("ravdess", "meld") if pools.has(s, "text", neutral)]
    if not options:
        return None
    return pools.draw(options[int(rng.integers(len(options)))], "text", neutral, rng)


def compose_dialogues(
    dialogues: Sequence[DialogueFeatures],
    kinds: Mapping[str, str],
    labels: Sequence[str],
    feature_dim: int,
    settings: ComposeSettings,
    rng: np.random.Generator,
    split: str = "train",
) -> list[DialogueFeatures]:
    """`settings.dialogues` composed conversations drawn from `dialogues` (one split's features)."""
    if settings.dialogues <= 0:
        return []
    if "neutral" not in labels:
        raise ValueError(f"composed conversations need a 'neutral' label; labels are {list(labels)}")
    neutral = list(labels).index("neutral")
    pools = Pools(dialogues, kinds)
    emotions = [y for y in range(len(labels)) if y != neutral]
    out: list[DialogueFeatures] = []
    for n in range(settings.dialogues):
        length = int(rng.integers(settings.min_len, settings.max_len + 1))
        uids, speakers, ys = [], [], []
        feats = {m: np.zeros((length, feature_dim), np.float32) for m in MODALITIES}
        present = {m: np.zeros(length, bool) for m in MODALITIES}
        for i in range(length):
            if rng.random() < settings.neutral_share:
                cue, y = "none", neutral
            else:
                y = emotions[int(rng.integers(len(emotions)))]
                usable = [c for c, ms in CUES.items() if ms and all(pools.has(SOURCE_OF[m], m, y) for m in ms)]
                if not usable:
                    cue, y = "none", neutral
                else:
                    cue = usable[int(rng.integers(len(usable)))]
            carried = CUES[cue]
            for m in MODALITIES:
                vec: Optional[np.ndarray] = None
                if m in carried:
                    vec = pools.draw(SOURCE_OF[m], m, y, rng)
                elif m == "text":
                    vec = _plain_text(pools, neutral, rng)
                elif m == "audio" and rng.random() >= settings.absent_voice and pools.has("ravdess", m, neutral):
                    vec = pools.draw("ravdess", m, neutral, rng)
                elif m == "video" and rng.random() >= settings.absent_face and pools.has("fer2013", m, neutral):
                    vec = pools.draw("fer2013", m, neutral, rng)
                if vec is not None:
                    feats[m][i], present[m][i] = vec, True
            uids.append(f"composed/{split}/{n:05d}/{i}:{cue}")
            speakers.append(i % 2 if rng.random() < 0.8 else int(rng.integers(2)))
            ys.append(y)
        spk = np.asarray(speakers, np.int64)
        _, first = np.unique(spk, return_index=True)  # ids by first appearance, as the features format wants
        remap = {int(s): j for j, s in enumerate(spk[np.sort(first)])}
        d = DialogueFeatures(
            did=f"composed-{split}-{n:05d}", split=split, source="composed", uids=uids,
            speakers=np.asarray([remap[int(s)] for s in spk], np.int64), labels=np.asarray(ys, np.int64),
            feats={kinds[m]: feats[m] for m in MODALITIES}, present=present,
        )
        d.validate()
        out.append(d)
    return out


def cue_of(uid: str) -> str:
    """The cue type a composed utterance id records (`...:voice+face`); '' for other utterances."""
    return uid.rsplit(":", 1)[1] if uid.startswith("composed/") and ":" in uid else ""


def drop_modalities(dialogues: Sequence[DialogueFeatures], prob: float,
                    rng: np.random.Generator) -> list[DialogueFeatures]:
    """Copies in which each present modality of a labelled utterance is masked with `prob`, keeping one.

    MAGT then cannot lean on one modality always being there: a face out of
    view or a silent clip must leave a usable prediction from the rest.
    """
    if prob <= 0:
        return list(dialogues)
    out = []
    for d in dialogues:
        present = {m: d.present[m].copy() for m in MODALITIES}
        stack = np.stack([present[m] for m in MODALITIES])  # (3, L)
        drop = (rng.random(stack.shape) < prob) & stack & (d.labels != IGNORE_LABEL)[None, :]
        keep = stack & ~drop
        lost = ~keep.any(axis=0) & stack.any(axis=0)
        for i in np.flatnonzero(lost):  # everything dropped: give one modality back
            options = np.flatnonzero(stack[:, i])
            keep[int(options[int(rng.integers(len(options)))]), i] = True
        out.append(DialogueFeatures(d.did, d.split, d.source, d.uids, d.speakers, d.labels, d.feats,
                                    {m: keep[k] for k, m in enumerate(MODALITIES)}))
    return out
