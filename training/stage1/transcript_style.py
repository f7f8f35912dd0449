"""Make human-typed transcripts look like what the streaming ASR writes.

The text teacher learns from MELD's typed subtitles, which are full of "!",
"...", quotes and dashes; in the service it reads faster-whisper output, which
has almost none of them. A teacher trained only on typed text learns "!" as a
cue for anger and joy and loses it at run time (docs/RESULTS.md measures how
much, with `magtkd-train text-style`). Training on a mix of both styles
(`train.stage1.asr_style_prob`) keeps the words, not the punctuation, as the
evidence; `asr_style` with probability 1 is also how a split is scored "as
ASR output". `asr_style_dataset` does the same to a whole dataset, so stage 2
(`train.stage2.asr_style`) trains, selects and is tested on the text features
the service will give MAGT.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Optional

import numpy as np

from magtkd_stream.encoders.base import TextInput
from training.data.types import Dataset

_QUESTION = re.compile(r"[!?]*\?[!?]*")  # "?!", "!?", "??" -> "?"
_BANG = re.compile(r"!+")
_ELLIPSIS = re.compile(r"\.{2,}|…")
_QUOTES_DASHES = re.compile(r"[\"“”]|\s-+\s|--+|—|–")
_SPACE_BEFORE = re.compile(r"\s+([,.?])")
_REPEAT = re.compile(r"([,.])[,.]+")
_SPACES = re.compile(r"\s+")


def asr_style(text: str) -> str:
    """`text` with the punctuation faster-whisper would write: "!" -> ".", ellipses -> ",", no quotes or dashes."""
    t = _QUESTION.sub("?", text)
    t = _BANG.sub(".", t)
    t = _ELLIPSIS.sub(",", t)
    t = _QUOTES_DASHES.sub(" ", t)
    t = _SPACE_BEFORE.sub(r"\1", t)
    t = _REPEAT.sub(r"\1", t)
    return _SPACES.sub(" ", t).strip()


class TranscriptStyler:
    """Rewrites each turn of a prompt (context and target, independently) in ASR style with probability `prob`.

    `prob` = 1 rewrites everything (scoring a split as ASR output); 0 leaves the
    input untouched. `reseed` gives each epoch its own draw, the same on rerun.
    """

    def __init__(self, prob: float, seed: int = 0) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"asr_style probability must be in [0, 1], got {prob}")
        self.prob = float(prob)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    def reseed(self, epoch: int) -> None:
        self._rng = np.random.default_rng([self.seed, int(epoch)])

    def _turn(self, text: str) -> str:
        if self.prob >= 1.0 or (self.prob > 0.0 and self._rng.random() < self.prob):
            return asr_style(text)
        return text

    def __call__(self, item: TextInput) -> TextInput:
        if self.prob <= 0.0:
            return item
        context = [(speaker, self._turn(text)) for speaker, text in item.context]
        return replace(item, text=self._turn(item.text), context=context)


def styler_for(prob: Optional[float], seed: int) -> Optional[TranscriptStyler]:
    """A styler when `prob` > 0, else None (nothing to rewrite)."""
    return TranscriptStyler(prob, seed) if prob else None


def asr_style_dataset(dataset: Dataset) -> Dataset:
    """`dataset` with every transcript, in every split, rewritten by `asr_style` (contexts follow, being the same turns)."""
    splits = {
        split: [replace(d, utterances=[replace(u, text=asr_style(u.text)) for u in d.utterances]) for d in dialogues]
        for split, dialogues in dataset.splits.items()
    }
    return replace(dataset, splits=splits)
