"""The MAGTKD prompt: dialogue context, the tokenizer's separator, then "For s: t Now s feels <mask>".

The text teacher reads the encoder's hidden state at the mask token, so the
builder guarantees that the prompt and its mask always survive truncation:
tokens are dropped from the LEFT (oldest context first), and only when the
prompt alone is too long is the target utterance itself cut, again from its
left, keeping "Now {speaker} feels <mask>" intact.

The special-token layout ([CLS] a [SEP] b [SEP] for BERT, <s> a </s></s> b </s>
for RoBERTa, ...) is learned from the tokenizer itself by encoding a probe
pair, so no tokenizer family is hard-coded here.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

logger = logging.getLogger(__name__)

_PROBE = ("hello", "world")


@dataclass(frozen=True)
class _Layout:
    """Special-token ids around and between the two segments of a pair encoding."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


_LAYOUTS: "weakref.WeakKeyDictionary[Any, _Layout]" = weakref.WeakKeyDictionary()


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


def _pair_layout(tokenizer: Any) -> _Layout:
    """Where the tokenizer puts its special tokens when it encodes a pair of segments."""
    try:
        return _LAYOUTS[tokenizer]
    except (KeyError, TypeError):
        pass
    a, b = _encode(tokenizer, _PROBE[0]), _encode(tokenizer, _PROBE[1])
    pair = list(tokenizer(_PROBE[0], _PROBE[1], add_special_tokens=True)["input_ids"])
    ia = _find(pair, a)
    ib = _find(pair, b, ia + len(a)) if ia >= 0 else -1
    if ia < 0 or ib < 0:
        raise ValueError(
            f"cannot find the special-token layout of tokenizer {type(tokenizer).__name__}: "
            "encoding a pair of segments did not contain the segments' own ids"
        )
    layout = _Layout(tuple(pair[:ia]), tuple(pair[ia + len(a) : ib]), tuple(pair[ib + len(b) :]))
    sep_id = getattr(tokenizer, "sep_token_id", None)
    if not layout.middle:
        # A tokenizer without a pair template still needs a boundary between context and prompt.
        if sep_id is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has neither a pair template nor a sep_token; "
                "the MAGTKD prompt needs a separator between context and prompt"
            )
        layout = _Layout(layout.prefix, (sep_id,), layout.suffix)
    try:
        _LAYOUTS[tokenizer] = layout
    except TypeError:
        pass
    return layout


def _clean(text: str, tokenizer: Any) -> str:
    """Remove special-token strings from user text so only the prompt's own mask is a mask."""
    for tok in getattr(tokenizer, "all_special_tokens", ()) or ():
        if tok and tok in text:
            text = text.replace(tok, " ")
    return " ".join(text.split())


def _mask_token(tokenizer: Any) -> tuple[str, int]:
    tok, tid = getattr(tokenizer, "mask_token", None), getattr(tokenizer, "mask_token_id", None)
    if not tok or tid is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no mask token; the MAGTKD prompt needs a "
            "masked-language-model tokenizer (e.g. roberta, bert)"
        )
    return str(tok), int(tid)


def _split_template(template: str, speaker: str, mask: str) -> tuple[str, str | None, str]:
    """Template -> (text before {text}, marker, text after); marker None when there is no {text}."""
    if "{mask}" not in template:
        raise ValueError(f"prompt template must contain {{mask}}, got {template!r}")
    fill = {"speaker": speaker, "mask": mask}
    if "{text}" not in template:
        return "", None, template.format(**fill, text="")
    before, after = template.split("{text}", 1)
    try:
        return before.format(**fill, text=""), "{text}", after.format(**fill, text="")
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"prompt template {template!r} may only use {{speaker}}, {{text}} and {{mask}}: {exc}"
        ) from None


def _prompt_pieces(tokenizer: Any, speaker: str, text: str, template: str) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the prompt as (head, target text, tail); the tail holds the mask."""
    mask, _ = _mask_token(tokenizer)
    before, marker, after = _split_template(template, speaker, mask)
    if marker is None:
        return [], [], _encode(tokenizer, after)
    # Whitespace belongs to the word that follows it (as byte-level BPE sees it), so
    # tokenizing the three pieces separately matches tokenizing the whole prompt.
    head_str = before.rstrip()
    gap = before[len(head_str) :]
    text_str = ((gap if head_str else "") + text) if text else ""
    tail_str = after if (head_str or text_str) else after.lstrip()
    head = _encode(tokenizer, head_str) if head_str else []
    body = _encode(tokenizer, text_str) if text_str else []
    return head, body, _encode(tokenizer, tail_str)


def _context_ids(tokenizer: Any, turns: Sequence[tuple[str, str]], budget: int) -> list[int]:
    """The last `budget` tokens of "s_1: t_1 s_2: t_2 ...", tokenizing newest first and stopping early."""
    if budget <= 0 or not turns:
        return []
    pieces: list[list[int]] = []
    total = 0
    for i in range(len(turns) - 1, -1, -1):
        spk, txt = turns[i]
        piece = f"{spk}: {txt}".strip()
        ids = _encode(tokenizer, (" " + piece) if i > 0 else piece)
        pieces.append(ids)
        total += len(ids)
        if total >= budget:
            break
    flat = [t for ids in reversed(pieces) for t in ids]
    return flat[len(flat) - budget :] if len(flat) > budget else flat


@dataclass(frozen=True)
class PromptSegments:
    """A built prompt: ids, where its mask is, and where the second (prompt) segment starts."""

    ids: list[int]
    mask_pos: int
    second_start: int  # first index of segment two (after the separator), for token-type ids


def build_prompt_segments(
    tokenizer: Any,
    context: Sequence[tuple[str, str]],
    speaker: str,
    text: str,
    template: str,
    max_tokens: int,
    context_turns: int = 0,
) -> PromptSegments:
    """build_prompt_ids, also telling where the prompt segment starts (see there)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if context_turns < 0:
        raise ValueError(f"context_turns must be >= 0 (0 = all), got {context_turns}")
    _, mask_id = _mask_token(tokenizer)
    layout = _pair_layout(tokenizer)
    speaker = _clean(str(speaker), tokenizer)
    text = _clean(str(text), tokenizer)
    prev = [(_clean(str(s), tokenizer), _clean(str(t), tokenizer)) for s, t in context]
    if context_turns > 0:
        prev = prev[-context_turns:]
    turns = prev + [(speaker, text)]

    head, body, tail = _prompt_pieces(tokenizer, speaker, text, template)
    if tail.count(mask_id) != 1:
        raise ValueError(
            f"prompt template {template!r} must yield exactly one mask token "
            f"{tokenizer.mask_token!r} after its text; got {tail.count(mask_id)}"
        )
    room = max_tokens - layout.size
    if room < len(tail):
        raise ValueError(
            f"max_tokens={max_tokens} is too small for the prompt tail "
            f"({len(tail)} tokens + {layout.size} special tokens)"
        )
    prompt_len = len(head) + len(body) + len(tail)
    if prompt_len > room:
        # The prompt alone does not fit: cut the target text from its left, then the head.
        over = prompt_len - room
        cut_body = min(over, len(body))
        body = body[cut_body:]
        head = head[min(over - cut_body, len(head)) :]
        logger.debug("prompt truncated by %d tokens inside the target utterance", over)
    prompt = head + body + tail
    ctx = _context_ids(tokenizer, turns, room - len(prompt))
    ids = list(layout.prefix) + ctx + list(layout.middle) + prompt + list(layout.suffix)
    second = len(layout.prefix) + len(ctx) + len(layout.middle)
    return PromptSegments(ids, second + len(head) + len(body) + tail.index(mask_id), second)


def build_prompt_ids(
    tokenizer: Any,
    context: Sequence[tuple[str, str]],
    speaker: str,
    text: str,
    template: str,
    max_tokens: int,
    context_turns: int = 0,
) -> tuple[list[int], int]:
    """Input ids of the MAGTKD prompt for one utterance, and the index of its mask token.

    context: preceding (speaker, text) turns, oldest first, the current one excluded;
    context_turns > 0 keeps only that many of them (0 keeps all). The current
    utterance is always part of the context segment (C_k includes it). Raises
    ValueError when max_tokens cannot hold "Now {speaker} feels <mask>" plus the
    special tokens, or the template does not yield exactly one mask.
    """
    seg = build_prompt_segments(tokenizer, context, speaker, text, template, max_tokens, context_turns)
    return seg.ids, seg.mask_pos


def build_prompt_text(
    tokenizer: Any,
    context: Sequence[tuple[str, str]],
    speaker: str,
    text: str,
    template: str,
    max_tokens: int,
    context_turns: int = 0,
) -> str:
    """What the encoder actually reads (special tokens shown), for display and debugging."""
    ids, _ = build_prompt_ids(tokenizer, context, speaker, text, template, max_tokens, context_turns)
    return str(tokenizer.decode(ids, skip_special_tokens=False))
