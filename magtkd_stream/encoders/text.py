"""Prompted text encoder (the MAGTKD text teacher): hidden state at the prompt's mask token.

Each utterance is encoded together with its dialogue context as
"C_k <sep> For s_k: t_k Now s_k feels <mask>" (see magtkd_stream.model.prompt); the
vector is the encoder's last hidden state at the mask. Batches are right-padded
with an attention mask so an utterance's vector never depends on its batch mates.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch

from magtkd_stream.config import TextEncoderConfig
from magtkd_stream.encoders.base import Encoder, EncoderOutput, TextInput
from magtkd_stream.encoders.hf_common import build_hf_model, freeze_all_but_top
from magtkd_stream.model.prompt import build_prompt_segments
from magtkd_stream.resources import resolve_model

logger = logging.getLogger(__name__)

_HUGE = 1_000_000  # tokenizers without a length limit report ~1e30


def _load_tokenizer(ref: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise OSError(
            f"cannot load the text tokenizer {ref!r} (resolved to {path!r}): {exc}. Give a local folder, "
            "a cached Hugging Face id, or a 'package:<module>' reference in encoders.text.tokenizer"
        ) from exc


def _random_init_kwargs(cfg: TextEncoderConfig, tokenizer: Any) -> dict[str, Any]:
    """Fit a random-init config to the tokenizer: every id it emits must index the embeddings."""
    kwargs = dict(cfg.random_init or {})
    vocab = len(tokenizer)
    if kwargs.get("vocab_size", vocab) != vocab:
        logger.warning("encoders.text.random_init.vocab_size=%s replaced by the tokenizer's %d",
                       kwargs["vocab_size"], vocab)
    kwargs["vocab_size"] = vocab
    if tokenizer.pad_token_id is not None:
        kwargs["pad_token_id"] = int(tokenizer.pad_token_id)
    pad = int(kwargs.get("pad_token_id") or 0)
    kwargs.setdefault("max_position_embeddings", cfg.max_tokens + pad + 2)
    return kwargs


class PromptTextEncoder(Encoder):
    """Text encoder of the MAGTKD prompt; `dim` is the backbone's hidden size."""

    modality = "text"

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        tok_ref = cfg.tokenizer or cfg.model
        self.tokenizer = _load_tokenizer(tok_ref)
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {tok_ref!r} has no mask token; the MAGTKD prompt needs one")
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {tok_ref!r} has no pad token; batching needs one")
        random_init = _random_init_kwargs(cfg, self.tokenizer) if cfg.random_init is not None else None
        self.model = build_hf_model(cfg.model, random_init, "encoders.text")
        config = self.model.config
        self.dim = int(config.hidden_size)
        if len(self.tokenizer) > int(config.vocab_size):
            raise ValueError(
                f"tokenizer {tok_ref!r} has {len(self.tokenizer)} tokens but the model's vocabulary has "
                f"{config.vocab_size}; use the model's own tokenizer"
            )
        self.max_tokens = self._token_limit(cfg.max_tokens)
        self.use_token_types = (
            "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
            and int(getattr(config, "type_vocab_size", 1) or 1) > 1
        )
        self.set_trainable_layers(cfg.trainable_layers)
        self.eval()  # inference by default; training calls .train()

    def _token_limit(self, wanted: int) -> int:
        """cfg.max_tokens, capped by what the tokenizer and the position table allow."""
        limit = wanted
        tok_max = int(getattr(self.tokenizer, "model_max_length", _HUGE) or _HUGE)
        if tok_max < _HUGE:
            limit = min(limit, tok_max)
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos:
            # RoBERTa-style embeddings number positions from padding_idx + 1.
            pad_idx = getattr(getattr(self.model, "embeddings", None), "padding_idx", None)
            limit = min(limit, int(max_pos) - (int(pad_idx) + 1 if pad_idx is not None else 0))
        if limit < wanted:
            logger.info("encoders.text.max_tokens %d capped to the model's limit %d", wanted, limit)
        if limit < 16:
            raise ValueError(f"the text model allows only {limit} tokens; the prompt needs at least 16")
        return limit

    def collate(self, items: Sequence[TextInput]) -> dict[str, Any]:
        """Prompts right-padded to the batch's longest; present is False for an empty transcript."""
        if not items:
            raise ValueError("collate needs at least one TextInput")
        rows: list[list[int]] = []
        starts: list[int] = []
        mask_pos: list[int] = []
        present: list[bool] = []
        for i, item in enumerate(items):
            if not isinstance(item, TextInput):
                raise TypeError(f"item {i}: expected TextInput, got {type(item).__name__}")
            seg = build_prompt_segments(
                self.tokenizer, item.context, item.speaker, item.text or "", self.cfg.template,
                self.max_tokens, self.cfg.context_turns,
            )
            rows.append(seg.ids)
            starts.append(seg.second_start)
            mask_pos.append(seg.mask_pos)
            present.append(bool((item.text or "").strip()))
        width = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, start) in enumerate(zip(rows, starts)):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[i, : len(row)] = 1
            types[i, start : len(row)] = 1
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "mask_pos": torch.tensor(mask_pos, dtype=torch.long),
            "present": torch.tensor(present, dtype=torch.bool),
        }
        if self.use_token_types:
            batch["token_type_ids"] = types
        return batch

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_pos: torch.Tensor,
        present: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> EncoderOutput:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model(**kwargs).last_hidden_state  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vectors = hidden[rows, mask_pos.to(hidden.device)]  # (B, H)
        present = present.to(device=hidden.device, dtype=torch.bool)
        vectors = vectors * present.unsqueeze(-1).to(vectors.dtype)  # absent -> zeros, never data
        return EncoderOutput(vectors=vectors, present=present)

    def set_trainable_layers(self, n: int) -> None:
        """Freeze embeddings and all but the top `n` transformer layers (-1: all, 0: none)."""
        freeze_all_but_top(self.model, n)
