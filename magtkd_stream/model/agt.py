"""Anchor gated transformer block AGT(n -> m): anchor modality m queries source modality n.

One block = input dropout, then `layers` gated cross-attention layers. Each layer:
    H  = Q + Dropout(MHA(Q, K, V))          Q from the anchor, K = V from the source
    H  = H + FFN(LayerNorm(H))              GELU, d_ff
    H' = H * sigmoid(W_g H + b_g)           the paper's gate: no ReLU inside, so it can close
Masks arrive precomputed (see `attention_mask`) because all blocks that read the
same source share them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_mask(key_valid: Tensor, allowed: Tensor | None) -> tuple[Tensor, Tensor]:
    """Combine which keys exist with which query/key pairs may meet.

    key_valid: (N, S) bool, True where the source modality is present at a real utterance.
    allowed:   (S, S) bool, True where query i may look at key j, or None (all pairs).
    Returns (mask, has_key): mask (N, S, S) bool for attention (True = attend), and
    has_key (N, S) bool. A query row with no valid key gets an all-True row in `mask`
    (keeps softmax finite) and has_key False, so the caller zeroes its attention output.
    """
    mask = key_valid[:, None, :]  # (N, 1, S)
    if allowed is not None:
        mask = mask & allowed[None, :, :]  # (N, S, S)
    else:
        mask = mask.expand(-1, key_valid.shape[1], -1)  # (N, S, S)
    has_key = mask.any(dim=-1)  # (N, S)
    return mask | ~has_key[..., None], has_key


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads with a boolean (True = attend) mask."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, query: Tensor, source: Tensor, mask: Tensor) -> Tensor:
        n, s, d = query.shape  # (N, S, d)
        h = self.heads

        def split(x: Tensor) -> Tensor:  # (N, S, d) -> (N, h, S, d/h)
            return x.view(n, x.shape[1], h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(source)), split(self.v_proj(source))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :, :])  # (N, h, S, d/h)
        return self.out_proj(o.transpose(1, 2).reshape(n, s, d))  # (N, S, d)


class AGTLayer(nn.Module):
    """One gated cross-attention layer (see the module docstring for the equations)."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, heads)
        self.attn_drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )
        self.gate = nn.Linear(d_model, d_model)

    def forward(self, query: Tensor, source: Tensor, mask: Tensor, has_key: Tensor) -> Tensor:
        # query, source: (N, S, d); mask: (N, S, S) bool; has_key: (N, S) bool
        att = self.attn(query, source, mask) * has_key[..., None].to(query.dtype)  # rows without keys -> 0
        h = query + self.attn_drop(att)  # (N, S, d)
        h = h + self.ffn(self.norm(h))  # (N, S, d)
        alpha = torch.sigmoid(self.gate(h))  # (N, S, d), in (0, 1)
        return h * alpha


class AGTBlock(nn.Module):
    """AGT(n -> m): `layers` stacked AGTLayers; keys/values stay the source, the query is refined."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.in_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(AGTLayer(d_model, heads, d_ff, dropout) for _ in range(layers))

    def forward(self, anchor: Tensor, source: Tensor, emb: Tensor, mask: Tensor, has_key: Tensor) -> Tensor:
        # anchor, source, emb: (N, S, d) -> (N, S, d)
        q = self.in_drop(anchor + emb)
        kv = self.in_drop(source + emb)
        for layer in self.layers:
            q = layer(q, kv, mask, has_key)
        return q
