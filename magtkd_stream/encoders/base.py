"""The one interface every utterance encoder implements, and the trained head on top of it.

An encoder turns a batch of raw utterances of one modality into vectors of a
fixed width `dim`, plus a `present` flag per utterance: a clip with no face,
silence, or an empty transcript is reported absent so that MAGT masks it
instead of treating zeros as data. Preprocessing (`collate`) is separate from
the network (`forward`) so that training can move batches to a device and the
streaming actors can batch across sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class TextInput:
    """One utterance to encode with its dialogue context (oldest first, current excluded)."""

    speaker: str
    text: str
    context: Sequence[tuple[str, str]] = field(default_factory=tuple)


@dataclass
class AudioInput:
    """Mono waveform, float32 in [-1, 1], at 16 kHz."""

    waveform: np.ndarray


@dataclass
class VideoInput:
    """Frames spanning the utterance, each H x W x 3 uint8 in OpenCV's BGR order."""

    frames: Sequence[np.ndarray]


@dataclass
class EncoderOutput:
    vectors: torch.Tensor  # (B, dim)
    present: torch.Tensor  # (B,) bool: False where the modality is absent for that utterance


class Encoder(nn.Module):
    """Base class: `collate` (CPU preprocessing) then `forward` (network) -> EncoderOutput."""

    modality: ClassVar[str] = ""
    dim: int

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """Preprocess raw inputs into the tensors `forward` takes (no gradients needed)."""
        raise NotImplementedError

    def forward(self, **batch: Any) -> EncoderOutput:  # type: ignore[override]
        raise NotImplementedError

    def set_trainable_layers(self, n: int) -> None:
        """Freeze the backbone except its top `n` layers (-1: train everything, 0: frozen)."""
        for p in self.parameters():
            p.requires_grad = n == -1

    @torch.inference_mode()
    def encode(self, items: Sequence[Any]) -> EncoderOutput:
        """Convenience for inference: collate, move to the encoder's device, forward."""
        batch = self.collate(items)
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return self.forward(**batch)


class ModalityHead(nn.Module):
    """F = Linear(dim -> feature_dim)(h); logits = Linear(feature_dim -> C)(F) (MAGTKD_SPEC stage 1)."""

    def __init__(self, in_dim: int, feature_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.cls = nn.Linear(feature_dim, num_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.proj(h)
        return feats, self.cls(self.drop(feats))


class UtteranceModel(nn.Module):
    """An encoder with its head: the stage-1 teacher or student of one modality."""

    def __init__(self, encoder: Encoder, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ModalityHead(encoder.dim, feature_dim, num_classes)

    @property
    def modality(self) -> str:
        return self.encoder.modality

    def forward(self, **batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (features (B, feature_dim), logits (B, C), present (B,))."""
        out = self.encoder(**batch)
        feats, logits = self.head(out.vectors)
        return feats, logits, out.present
