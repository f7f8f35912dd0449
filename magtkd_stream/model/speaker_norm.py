"""Causal per-speaker normalisation of utterance vectors within a session.

Why: a voice head trained on a few actors reads a new speaker's ordinary voice
as an emotion (a low voice as sadness, a synthetic one as anger). Subtracting
the speaker's own running mean, measured on that speaker's earlier utterances
only, removes the voice and keeps how this utterance departs from it. The
mean starts at the training set's mean (the prior, worth `prior_weight`
utterances), so the first utterances are left almost as they are, and an
utterance never changes a vector already produced: the stream stays causal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass
class SpeakerNormalizer:
    """v -> v - m_s + mu, m_s = (sum of the speaker's earlier vectors + k * mu) / (n + k)."""

    prior_mean: np.ndarray  # mu: the training vectors' mean
    prior_weight: float = 4.0  # k: how many utterances the prior counts for
    _sums: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.prior_mean = np.asarray(self.prior_mean, dtype=np.float32).reshape(-1)
        if not self.prior_weight > 0:
            raise ValueError(f"prior_weight must be > 0 (utterances the prior counts for), got {self.prior_weight}")

    def speaker_mean(self, speaker: str) -> np.ndarray:
        n = self._counts.get(speaker, 0)
        s = self._sums.get(speaker)
        k = self.prior_weight
        return self.prior_mean if s is None else (s + k * self.prior_mean) / (n + k)

    def peek(self, speaker: str, vector: np.ndarray) -> np.ndarray:
        """The normalised vector, leaving the statistics as they are (an utterance still being spoken)."""
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape != self.prior_mean.shape:
            raise ValueError(f"vector of width {v.size}, the normaliser's prior has width {self.prior_mean.size}")
        return (v - self.speaker_mean(speaker) + self.prior_mean).astype(np.float32)

    def __call__(self, speaker: str, vector: np.ndarray) -> np.ndarray:
        """The normalised vector; then the speaker's statistics take this utterance in."""
        out = self.peek(speaker, vector)
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        self._sums[speaker] = self._sums.get(speaker, np.zeros_like(v)) + v
        self._counts[speaker] = self._counts.get(speaker, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores (extra["speaker_norm"][modality]); the statistics are per session, not stored."""
        return {"prior_weight": float(self.prior_weight), "mean": [float(x) for x in self.prior_mean]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpeakerNormalizer":
        try:
            return cls(np.asarray(d["mean"], dtype=np.float32), float(d["prior_weight"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"speaker_norm entry {dict(d) if isinstance(d, Mapping) else d!r:.80}: needs "
                             f"'mean' (a list of numbers) and 'prior_weight' > 0 ({exc})") from exc

    def fresh(self) -> "SpeakerNormalizer":
        """The same prior with no speaker seen yet (one per session)."""
        return SpeakerNormalizer(self.prior_mean.copy(), self.prior_weight)



def normalize_sequence(prior: SpeakerNormalizer, vectors: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Rows of `vectors` (in stream order) normalised as a new session with `prior` would, speaker by speaker."""
    session = prior.fresh()
    rows = [session(str(s), v) for s, v in zip(speakers, vectors)]
    return np.stack(rows) if rows else np.asarray(vectors, np.float32).copy()
