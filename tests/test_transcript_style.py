"""ASR-style transcripts: the rewrite itself, and stage 1 training and scoring the text teacher with it."""

from __future__ import annotations

import pytest

from magtkd_stream.encoders.base import TextInput
from training.stage1.transcript_style import TranscriptStyler, asr_style


@pytest.mark.parametrize("typed, heard", [
    ("Stop it!! I am furious!", "Stop it. I am furious."),
    ("You got it?! No way...", "You got it? No way,"),
    ('He said "fine" -- and left…', "He said fine and left,"),
    ("Plain words, as spoken.", "Plain words, as spoken."),
])
def test_asr_style_drops_what_the_asr_never_writes(typed: str, heard: str) -> None:
    assert asr_style(typed) == heard


def test_styler_rewrites_each_turn_independently_and_reproducibly() -> None:
    item = TextInput("A", "Great!", [("B", f"Line {i}!") for i in range(40)])
    assert TranscriptStyler(0.0)(item) is item
    everything = TranscriptStyler(1.0)(item)
    assert everything.text == "Great." and all(t.endswith(".") for _, t in everything.context)
    half = TranscriptStyler(0.5, seed=3)
    half.reseed(0)
    first = half(item)
    rewritten = sum(t.endswith(".") for _, t in first.context)
    assert 5 < rewritten < 35  # some turns, not all: each turn draws on its own
    half.reseed(0)
    assert half(item) == first  # the same epoch draws the same again
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TranscriptStyler(1.5)
