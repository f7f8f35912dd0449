"""Waveform transformer audio encoder (data2vec-audio style): mean of the last hidden states.

Each utterance is normalised over its own samples (zero mean, unit variance)
before padding, the model gets an attention mask, and pooling covers only the
frames computed from real samples, so an utterance's vector does not depend on
which other clips share its batch (the official code lacks this guarantee).

data2vec-audio stacks several positional convolutions and zeroes padded frames
only before the first, so padding would leak into real frames through the
others; hooks zero the padded frames before each of them, which makes a padded
clip see exactly the zeros that convolution padding gives it when alone.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch

from magtkd_stream.config import AudioEncoderConfig
from magtkd_stream.encoders.base import AudioInput, Encoder, EncoderOutput
from magtkd_stream.encoders.hf_common import build_hf_model, freeze_all_but_top

logger = logging.getLogger(__name__)


def _as_mono(waveform: Any, index: int) -> np.ndarray:
    w = np.asarray(waveform)
    if w.ndim == 2 and 1 in w.shape:
        w = w.reshape(-1)
    if w.ndim != 1:
        raise ValueError(f"audio item {index}: expected a mono waveform (1-D array), got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"audio item {index}: expected float samples in [-1, 1], got dtype {w.dtype}")
    w = w.astype(np.float32, copy=False)
    if w.size and not np.isfinite(w).all():
        raise ValueError(f"audio item {index}: waveform contains NaN or infinite samples")
    return w


class HFAudioEncoder(Encoder):
    """Audio encoder over 16 kHz waveforms; `dim` is the backbone's hidden size."""

    modality = "audio"
    kind = "hf"

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        if cfg.kind != "hf":
            raise ValueError(f"HFAudioEncoder serves encoders.audio.kind 'hf', got {cfg.kind!r}")
        from transformers import Wav2Vec2FeatureExtractor

        self.cfg = cfg
        self.model = build_hf_model(cfg.model, cfg.random_init, "encoders.audio")
        self.dim = int(self.model.config.hidden_size)
        self.max_samples = int(round(cfg.max_seconds * cfg.sample_rate))
        self.min_samples = self._receptive_field()
        self.extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=cfg.sample_rate, padding_value=0.0,
            do_normalize=True, return_attention_mask=True,
        )
        self._frame_mask: Optional[torch.Tensor] = None  # (B, T) during forward, for the hooks
        self._hook_positional_convs()
        self.set_trainable_layers(cfg.trainable_layers)
        self.eval()  # inference by default; training calls .train()

    def _hook_positional_convs(self) -> None:
        encoder = getattr(self.model, "encoder", None)
        layers = getattr(getattr(encoder, "pos_conv_embed", None), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            return  # a single positional convolution: the model's own zeroing suffices

        def zero_padding(_module: torch.nn.Module, args: tuple[Any, ...]) -> Optional[tuple[Any, ...]]:
            mask = self._frame_mask
            x = args[0]  # (B, C, T)
            if mask is None or x.dim() != 3 or x.shape[-1] != mask.shape[1]:
                return None
            return (x * mask[:, None, :].to(x.dtype),) + tuple(args[1:])

        for layer in layers:
            layer.register_forward_pre_hook(zero_padding)

    def _receptive_field(self) -> int:
        """Fewest samples that give the convolutional front end one output frame."""
        need = 1
        kernels = list(getattr(self.model.config, "conv_kernel", ()))
        strides = list(getattr(self.model.config, "conv_stride", ()))
        for k, s in reversed(list(zip(kernels, strides))):
            need = (need - 1) * int(s) + int(k)
        return need

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames computed from `sample_lengths` real samples."""
        helper = getattr(self.model, "_get_feat_extract_output_lengths", None)
        if helper is not None:
            return helper(sample_lengths).to(torch.long)
        out = sample_lengths.to(torch.long)
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            out = torch.div(out - int(k), int(s), rounding_mode="floor") + 1
        return out

    def collate(self, items: Sequence[AudioInput]) -> dict[str, Any]:
        """Normalised, right-padded waveforms with their attention mask; silence is absent."""
        if not items:
            raise ValueError("collate needs at least one AudioInput")
        waves: list[np.ndarray] = []
        present: list[bool] = []
        for i, item in enumerate(items):
            if not isinstance(item, AudioInput):
                raise TypeError(f"item {i}: expected AudioInput, got {type(item).__name__}")
            w = _as_mono(item.waveform, i)
            if w.size > self.max_samples:
                logger.warning("audio item %d is %.1f s long; cut to encoders.audio.max_seconds=%.1f s",
                               i, w.size / self.cfg.sample_rate, self.cfg.max_seconds)
                w = w[: self.max_samples]
            ok = bool(w.size) and bool(np.any(w != 0))
            present.append(ok)
            waves.append(w if ok else np.zeros(self.min_samples, dtype=np.float32))
        width = max(self.min_samples, max(w.size for w in waves))
        feats = self.extractor(
            waves, sampling_rate=self.cfg.sample_rate, padding="max_length", max_length=width,
            return_attention_mask=True, return_tensors="pt",
        )
        attention = feats["attention_mask"].to(torch.long)
        # Clips shorter than one frame's receptive field count their zero tail as real (per clip,
        # independent of the batch) so that every clip yields at least one frame.
        short = [i for i, w in enumerate(waves) if w.size < self.min_samples]
        for i in short:
            attention[i, : self.min_samples] = 1
        return {
            "input_values": feats["input_values"].to(torch.float32),
            "attention_mask": attention,
            "present": torch.tensor(present, dtype=torch.bool),
        }

    def forward(  # type: ignore[override]
        self, input_values: torch.Tensor, attention_mask: torch.Tensor, present: torch.Tensor
    ) -> EncoderOutput:
        dtype = next(self.model.parameters()).dtype
        width = self.frame_lengths(torch.tensor([input_values.shape[1]]))[0]
        frames = self.frame_lengths(attention_mask.sum(-1)).clamp(min=1, max=int(width))  # (B,)
        valid = torch.arange(int(width), device=input_values.device)[None, :] < frames.to(input_values.device)[:, None]
        self._frame_mask = valid
        try:
            hidden = self.model(input_values.to(dtype), attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        finally:
            self._frame_mask = None
        if hidden.shape[1] != valid.shape[1]:
            raise RuntimeError(f"audio model returned {hidden.shape[1]} frames, expected {valid.shape[1]}")
        weights = valid.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1)  # (B, H)
        present = present.to(device=hidden.device, dtype=torch.bool)
        pooled = pooled * present.unsqueeze(-1).to(pooled.dtype)  # absent -> zeros, never data
        return EncoderOutput(vectors=pooled, present=present)

    def set_trainable_layers(self, n: int) -> None:
        """Freeze the convolutional front end, projections and all but the top `n` layers."""
        freeze_all_but_top(self.model, n)
