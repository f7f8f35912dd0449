"""The one in-memory form every training dataset is read into.

MELD, IEMOCAP, RAVDESS, FER2013 and the synthetic set all become dialogues of
utterances, so that stage 1, feature extraction and stage 2 never care where an
utterance came from. Media stay on disk (a path and a time span); only small
arrays (a 48x48 face, a feature row) live in memory.

Loading never crashes on a bad item: it is skipped or degraded, logged, and
counted in a `LoadReport` that goes into the run report.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np

from magtkd_stream.media import MediaSpan

logger = logging.getLogger(__name__)

# Kinds of problems a loader counts; other kinds are accepted too.
WARNING_KINDS: tuple[str, ...] = (
    "missing_clip",
    "unreadable_clip",
    "missing_stream",
    "unknown_label",
    "malformed_row",
    "empty_dialogue",
    "capped_clip",
)


@dataclass(slots=True)
class Utterance:
    """One utterance: who spoke, what was said, its label, and where its media are."""

    uid: str  # unique within the dataset, e.g. "meld/train/dia12_utt3"
    speaker: str
    text: str  # "" when there is no transcript
    label: int | None  # index into Dataset.labels; None = unlabelled
    audio: MediaSpan | None = None
    video: MediaSpan | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # in-memory inputs (faces, feature rows)


@dataclass(slots=True)
class Dialogue:
    """Utterances in spoken order; single-clip sources are one-utterance dialogues."""

    did: str
    split: str
    utterances: list[Utterance]
    source: str

    def __len__(self) -> int:
        return len(self.utterances)


@dataclass
class LoadReport:
    """What was loaded and what was skipped or degraded, and why.

    `warn` logs the first few problems of each kind at WARNING (the rest at
    DEBUG, so a dataset with thousands of excluded rows does not flood the log)
    and counts every one; `note` counts an expected exclusion without a warning;
    `to_dict` is what the run report stores.
    """

    source: str = ""
    loaded: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> dialogues/utterances
    skipped: Counter[str] = field(default_factory=Counter)  # kind -> count
    details: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail), first MAX_KEPT_DETAILS

    MAX_LOGGED_PER_KIND: ClassVar[int] = 10
    MAX_KEPT_DETAILS: ClassVar[int] = 1000

    def warn(self, kind: str, detail: str) -> None:
        """Count one problem of `kind` and log it (WARNING for the first few of a kind)."""
        self.skipped[kind] += 1
        if len(self.details) < self.MAX_KEPT_DETAILS:
            self.details.append((kind, detail))
        n = self.skipped[kind]
        if n <= self.MAX_LOGGED_PER_KIND:
            logger.warning("[%s] %s: %s", self.source, kind, detail)
            if n == self.MAX_LOGGED_PER_KIND:
                logger.warning("[%s] %s: further problems of this kind are logged at DEBUG and counted",
                               self.source, kind)
        else:
            logger.debug("[%s] %s: %s", self.source, kind, detail)

    def note(self, kind: str, n: int = 1) -> None:
        """Count `n` expected exclusions (held-out actors, labels outside the task); no warning."""
        self.skipped[kind] += n

    def count(self, split: str, dialogues: list[Dialogue]) -> None:
        self.loaded[split] = {"dialogues": len(dialogues), "utterances": sum(len(d) for d in dialogues)}

    def summary(self) -> str:
        parts = [f"{s}: {c['dialogues']} dialogues / {c['utterances']} utterances" for s, c in self.loaded.items()]
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return "; ".join(parts) + f"; problems: {skipped}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": {k: dict(v) for k, v in self.loaded.items()},
            "skipped": dict(sorted(self.skipped.items())),
            "details": [{"kind": k, "detail": d} for k, d in self.details],
        }


@dataclass
class Dataset:
    """A named dataset: its label set, dialogues per split, and its load report."""

    name: str
    labels: tuple[str, ...]
    splits: dict[str, list[Dialogue]]
    report: LoadReport = field(default_factory=LoadReport)

    def utterances(self, split: str) -> Iterator[Utterance]:
        """Every utterance of a split, dialogue by dialogue."""
        if split not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        for dialogue in self.splits[split]:
            yield from dialogue.utterances

    def num_utterances(self, split: str) -> int:
        return sum(len(d) for d in self.splits.get(split, []))

    def label_counts(self, split: str) -> dict[str, int]:
        """Utterances per label name in a split (unlabelled ones left out)."""
        counts: Counter[str] = Counter(
            self.labels[u.label] for u in self.utterances(split) if u.label is not None
        )
        return {name: counts.get(name, 0) for name in self.labels}
