"""MAGT: the multi-modal anchor gated transformer that fuses utterance vectors (MAGTKD_SPEC.md, stage 2).

Cascade (audio and video anchors first, then text), nine AGT blocks, each with its own gate:
    a' = Linear([AGT(a->a); AGT(t->a); AGT(v->a)])
    v' = Linear([AGT(v->v); AGT(t->v); AGT(a->v)])
    t' = Linear([AGT(t->t); AGT(a'->t); AGT(v'->t)])
    y = W_t t' (prediction), y_a = W_a a', y_v = W_v v' (auxiliary heads)

Context. window = 0 attends over the whole dialogue (the paper). window = W > 0 is
the streaming model: the output for utterance i is computed from utterances
i-W < j <= i only (causal attention inside that window, positions counted from
the window's first utterance). Because t' reads a' and v', which themselves
attend, a single masked pass would let i see up to 2W-1 utterances back; the
windowed path therefore evaluates every window on its own, so a live service
that feeds the last W utterances gets exactly what training and evaluation saw.

Missing modalities are masked, never zero-faked: absent as a source -> excluded
from the keys; absent as an anchor -> a learned per-modality "missing" vector
stands in, so the absent features are never read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from magtkd_stream.model.agt import AGTBlock, attention_mask
from magtkd_stream.config import MAGTConfig
from magtkd_stream.names import MODALITIES

_T, _A, _V = 0, 1, 2
# "<source>2<anchor>"; a2t and v2t read the refined a' and v'.
BRANCHES: tuple[str, ...] = ("a2a", "t2a", "v2a", "v2v", "t2v", "a2v", "t2t", "a2t", "v2t")


def causal_window_mask(L: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """(L, L) bool, True where utterance i may attend to utterance j.

    window = 0: every pair (whole dialogue, bidirectional); window = W > 0: i-W < j <= i.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = whole dialogue), got {window}")
    if window == 0:
        return torch.ones(L, L, dtype=torch.bool, device=device)
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(L, device=device)[None, :]
    return (j <= i) & (j > i - window)


def sinusoidal_encoding(positions: Tensor, d_model: int) -> Tensor:
    """Sinusoidal position code: (...) integer positions -> (..., d_model) float (sin/cos interleaved)."""
    half = (d_model + 1) // 2
    inv_freq = torch.exp(torch.arange(half, device=positions.device) * (-2.0 * math.log(10000.0) / d_model))
    angle = positions.float()[..., None] * inv_freq  # (..., half)
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)[..., :d_model]


@dataclass
class MAGTOutput:
    """Per-utterance outputs: logits (B, L, C) of the fused and auxiliary heads, features (B, L, d)."""

    logits: Tensor
    logits_audio: Tensor
    logits_video: Tensor
    t_prime: Tensor
    a_prime: Tensor
    v_prime: Tensor


class MAGT(nn.Module):
    """Fuses per-utterance text/audio/video vectors of dialogues into emotion logits."""

    def __init__(self, cfg: MAGTConfig, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if feature_dim <= 0 or num_classes <= 1:
            raise ValueError(f"MAGT needs feature_dim > 0 and num_classes > 1, got {feature_dim} and {num_classes}")
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        d = cfg.d_model
        self.proj = nn.ModuleList(
            nn.Identity() if feature_dim == d else nn.Linear(feature_dim, d) for _ in MODALITIES
        )
        self.missing = nn.Parameter(torch.randn(len(MODALITIES), d) * 0.02)  # stands in for absent anchors
        self.pad_speaker = cfg.max_speakers  # own index: never a real speaker's id
        self.speaker = nn.Embedding(cfg.max_speakers + 1, d, padding_idx=self.pad_speaker)
        self.blocks = nn.ModuleDict(
            {name: AGTBlock(d, cfg.heads, cfg.d_ff, cfg.dropout, cfg.layers) for name in BRANCHES}
        )
        self.fuse_a = nn.Linear(3 * d, d)
        self.fuse_v = nn.Linear(3 * d, d)
        self.fuse_t = nn.Linear(3 * d, d)
        self.head_t = nn.Linear(d, num_classes)
        self.head_a = nn.Linear(d, num_classes)
        self.head_v = nn.Linear(d, num_classes)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        text: Tensor,
        audio: Tensor,
        video: Tensor,
        speakers: Tensor,
        pad_mask: Tensor,
        modality_mask: Tensor,
        window: Optional[int] = None,
    ) -> MAGTOutput:
        """text/audio/video (B, L, feature_dim); speakers (B, L) int; pad_mask (B, L) bool, True = real
        utterance; modality_mask (B, L, 3) bool, True = present, order (text, audio, video);
        window: None -> cfg.window, 0 = whole dialogue, W > 0 = causal window of the last W utterances.
        """
        w = self.cfg.window if window is None else int(window)
        self._check(text, audio, video, speakers, pad_mask, modality_mask, w)
        B, L = pad_mask.shape
        present = modality_mask & pad_mask[..., None]  # (B, L, 3); padding is never present
        xs = [self._anchor_input(m, x, present[..., m]) for m, x in enumerate((text, audio, video))]  # 3 x (B, L, d)
        spk = speakers.long().masked_fill(~pad_mask, self.pad_speaker)  # (B, L)

        if w == 0 or w >= L:  # one pass: every window starts at utterance 0
            pos = torch.arange(L, device=spk.device).expand(B, L)  # (B, L)
            allowed = None if w == 0 else causal_window_mask(L, w, spk.device)  # (L, L)
            t_p, a_p, v_p = self._cascade(xs, spk, pos, present, allowed)
        else:
            t_p, a_p, v_p = self._windowed(xs, spk, present, pad_mask, w)
        return MAGTOutput(
            logits=self.head_t(t_p),
            logits_audio=self.head_a(a_p),
            logits_video=self.head_v(v_p),
            t_prime=t_p,
            a_prime=a_p,
            v_prime=v_p,
        )

    def _anchor_input(self, m: int, x: Tensor, present: Tensor) -> Tensor:
        """(B, L, F) -> (B, L, d); absent positions are zeroed before use and then replaced by `missing[m]`."""
        keep = present[..., None]  # (B, L, 1)
        h = self.proj[m](x.masked_fill(~keep, 0.0))  # absent values (even NaN) never enter the graph
        return torch.where(keep, h, self.missing[m].to(h.dtype))

    def _cascade(
        self, xs: list[Tensor], spk: Tensor, pos: Tensor, present: Tensor, allowed: Optional[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The nine blocks over (N, S) sequences; returns t', a', v', each (N, S, d)."""
        t, a, v = xs
        emb = (sinusoidal_encoding(pos, self.cfg.d_model) + self.speaker(spk)).to(t.dtype)  # (N, S, d)
        # One mask per source modality: a' and v' as sources keep the masks of a and v.
        mt, ma, mv = (attention_mask(present[..., m], allowed) for m in (_T, _A, _V))
        b = self.blocks
        a_p = self.fuse_a(torch.cat([b["a2a"](a, a, emb, *ma), b["t2a"](a, t, emb, *mt), b["v2a"](a, v, emb, *mv)], -1))
        v_p = self.fuse_v(torch.cat([b["v2v"](v, v, emb, *mv), b["t2v"](v, t, emb, *mt), b["a2v"](v, a, emb, *ma)], -1))
        t_p = self.fuse_t(
            torch.cat([b["t2t"](t, t, emb, *mt), b["a2t"](t, a_p, emb, *ma), b["v2t"](t, v_p, emb, *mv)], -1)
        )
        return t_p, a_p, v_p

    def _windowed(
        self, xs: list[Tensor], spk: Tensor, present: Tensor, pad_mask: Tensor, w: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Evaluate each real utterance i on its own window (i-w, i]; padding rows come back as zeros."""
        B, L = pad_mask.shape
        b_idx, i_idx = pad_mask.nonzero(as_tuple=True)  # (N,), one window per real utterance
        if b_idx.numel() == 0:
            zeros = xs[0].new_zeros(B, L, self.cfg.d_model)
            return zeros, zeros.clone(), zeros.clone()
        j = i_idx[:, None] + torch.arange(-(w - 1), 1, device=spk.device)[None, :]  # (N, w) absolute index
        inside = j >= 0  # (N, w) slots before the dialogue start are padding
        jc = j.clamp_min(0)
        bb = b_idx[:, None].expand_as(jc)  # (N, w)
        xs_w = [x[bb, jc] for x in xs]  # 3 x (N, w, d)
        present_w = present[bb, jc] & inside[..., None]  # (N, w, 3)
        spk_w = spk[bb, jc].masked_fill(~inside, self.pad_speaker)  # (N, w)
        pos_w = (j - jc[:, :1]).clamp_min(0)  # (N, w) counted from the window's first utterance
        allowed = causal_window_mask(w, w, spk.device)  # (w, w)
        outs = self._cascade(xs_w, spk_w, pos_w, present_w, allowed)
        d = self.cfg.d_model
        result = []
        for o in outs:  # keep the last slot (utterance i) of each window
            full = o.new_zeros(B, L, d)
            full[b_idx, i_idx] = o[:, -1]
            result.append(full)
        return result[0], result[1], result[2]

    # --------------------------------------------------------------- checking
    def _check(
        self,
        text: Tensor,
        audio: Tensor,
        video: Tensor,
        speakers: Tensor,
        pad_mask: Tensor,
        modality_mask: Tensor,
        w: int,
    ) -> None:
        for name, x in zip(MODALITIES, (text, audio, video)):
            if x.dim() != 3 or x.shape[-1] != self.feature_dim or not x.is_floating_point():
                raise ValueError(
                    f"MAGT: {name} must be a float tensor (B, L, {self.feature_dim}), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
        if not (text.shape == audio.shape == video.shape):
            raise ValueError(
                f"MAGT: text, audio and video must share (B, L, F); got {tuple(text.shape)}, "
                f"{tuple(audio.shape)}, {tuple(video.shape)}"
            )
        B, L, _ = text.shape
        if L == 0:
            raise ValueError("MAGT: dialogues must hold at least one utterance (L >= 1)")
        if pad_mask.shape != (B, L) or pad_mask.dtype != torch.bool:
            raise ValueError(f"MAGT: pad_mask must be bool ({B}, {L}), got {pad_mask.dtype} {tuple(pad_mask.shape)}")
        if modality_mask.shape != (B, L, 3) or modality_mask.dtype != torch.bool:
            raise ValueError(
                f"MAGT: modality_mask must be bool ({B}, {L}, 3) in order {MODALITIES}, "
                f"got {modality_mask.dtype} {tuple(modality_mask.shape)}"
            )
        if speakers.shape != (B, L) or speakers.is_floating_point() or speakers.dtype == torch.bool:
            raise ValueError(
                f"MAGT: speakers must be integer ids ({B}, {L}), got {speakers.dtype} {tuple(speakers.shape)}"
            )
        real = speakers[pad_mask]
        limit = self.cfg.max_speakers
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= limit):
            bad = sorted({int(s) for s in real[(real < 0) | (real >= limit)].tolist()})
            raise ValueError(
                f"MAGT: speaker ids must be in [0, {limit}) (magt.max_speakers = {limit}); got {bad[:10]}. "
                "Raise magt.max_speakers or map speakers to smaller ids."
            )
        if w < 0:
            raise ValueError(f"MAGT: window must be >= 0 (0 = whole dialogue), got {w}")
        span = L if w == 0 else min(w, L)
        if span > self.cfg.max_len:
            raise ValueError(
                f"MAGT: {span} utterances in one attention span exceed magt.max_len = {self.cfg.max_len}; "
                "raise magt.max_len or use a causal window (magt.window)"
            )
