"""Clip transformer video encoder (TimeSformer style): the CLS vector of a uniformly sampled clip.

Frames arrive in OpenCV's BGR order; the model was trained on RGB normalised
with its processor's statistics, so collate converts, resizes (shortest edge,
then centre crop, as the processor does) and normalises with those statistics.
A clip shorter than `num_frames` repeats its last frame (MAGTKD_SPEC.md).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from magtkd_stream.config import VideoEncoderConfig
from magtkd_stream.encoders.base import Encoder, EncoderOutput, VideoInput
from magtkd_stream.encoders.hf_common import build_hf_model, freeze_all_but_top
from magtkd_stream.resources import resolve_model

logger = logging.getLogger(__name__)


def sample_indices(n: int, k: int) -> list[int]:
    """k frame indices spread uniformly over n frames, first and last included; short clips repeat the last."""
    if n <= 0:
        return []
    if n < k:
        return list(range(n)) + [n - 1] * (k - n)
    if k == 1:
        return [(n - 1) // 2]
    return [int(round(x)) for x in np.linspace(0, n - 1, k)]


def _processor_stats(model_ref: str) -> tuple[list[float], list[float], float]:
    """The pretrained model's own image mean, std and rescale factor."""
    from transformers import AutoImageProcessor

    path = resolve_model(model_ref)
    try:
        proc = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise OSError(
            f"cannot load the image processor of {model_ref!r}: {exc}. Give a local folder or a cached id, "
            "or set encoders.video.image_mean and image_std"
        ) from exc
    return list(proc.image_mean), list(proc.image_std), float(getattr(proc, "rescale_factor", 1 / 255))


class HFVideoEncoder(Encoder):
    """Video encoder over BGR frames; `dim` is the backbone's hidden size."""

    modality = "video"
    kind = "hf"

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        if cfg.kind != "hf":
            raise ValueError(f"HFVideoEncoder serves encoders.video.kind 'hf', got {cfg.kind!r}")
        self.cfg = cfg
        self.model = build_hf_model(cfg.model, cfg.random_init, "encoders.video")
        config = self.model.config
        self.dim = int(config.hidden_size)
        if cfg.random_init is not None:
            missing = [k for k in ("image_mean", "image_std") if getattr(cfg, k) is None]
            if missing:
                raise ValueError(
                    f"encoders.video.random_init has no processor to take statistics from: set "
                    f"{' and '.join('encoders.video.' + k for k in missing)} (3 RGB values each)"
                )
            mean, std, scale = list(cfg.image_mean or []), list(cfg.image_std or []), 1 / 255
        else:
            mean, std, scale = _processor_stats(cfg.model)
            mean, std = list(cfg.image_mean or mean), list(cfg.image_std or std)
        if any(s <= 0 for s in std):
            raise ValueError(f"encoders.video.image_std must be > 0, got {std}")
        self.image_size = int(cfg.image_size or getattr(config, "image_size", 0) or 224)
        self.rescale = scale
        # Plain CPU tensors, not buffers: collate runs on the CPU whatever device the model is on.
        self.image_mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.set_trainable_layers(cfg.trainable_layers)
        self.eval()  # inference by default; training calls .train()

    def _frame_tensor(self, frame: Any, item: int, index: int) -> torch.Tensor:
        """One BGR uint8 frame -> normalised RGB (3, S, S): shortest edge to S, centre crop."""
        f = np.asarray(frame)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(
                f"video item {item}, frame {index}: expected an H x W x 3 uint8 BGR image, "
                f"got shape {f.shape} dtype {f.dtype}"
            )
        rgb = torch.from_numpy(np.ascontiguousarray(f[..., ::-1])).permute(2, 0, 1).float() * self.rescale
        h, w = rgb.shape[1:]
        s = self.image_size
        scale = s / min(h, w)
        nh, nw = max(s, int(round(h * scale))), max(s, int(round(w * scale)))
        rgb = F.interpolate(rgb[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        top, left = (nh - s) // 2, (nw - s) // 2
        rgb = rgb[:, top : top + s, left : left + s]
        return (rgb - self.image_mean) / self.image_std

    def collate(self, items: Sequence[VideoInput]) -> dict[str, Any]:
        """pixel_values (B, num_frames, 3, S, S); present is False for a clip with no frames."""
        if not items:
            raise ValueError("collate needs at least one VideoInput")
        k, s = self.cfg.num_frames, self.image_size
        clips: list[torch.Tensor] = []
        present: list[bool] = []
        for i, item in enumerate(items):
            if not isinstance(item, VideoInput):
                raise TypeError(f"item {i}: expected VideoInput, got {type(item).__name__}")
            frames = list(item.frames or [])
            idx = sample_indices(len(frames), k)
            present.append(bool(idx))
            if not idx:
                clips.append(torch.zeros(k, 3, s, s))
                continue
            cache: dict[int, torch.Tensor] = {}
            for j in idx:
                if j not in cache:
                    cache[j] = self._frame_tensor(frames[j], i, j)
            clips.append(torch.stack([cache[j] for j in idx]))
        return {"pixel_values": torch.stack(clips), "present": torch.tensor(present, dtype=torch.bool)}

    def forward(self, pixel_values: torch.Tensor, present: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        dtype = next(self.model.parameters()).dtype
        hidden = self.model(pixel_values=pixel_values.to(dtype)).last_hidden_state  # (B, 1 + T*P, H)
        cls = hidden[:, 0]  # (B, H)
        present = present.to(device=cls.device, dtype=torch.bool)
        cls = cls * present.unsqueeze(-1).to(cls.dtype)  # absent -> zeros, never data
        return EncoderOutput(vectors=cls, present=present)

    def set_trainable_layers(self, n: int) -> None:
        """Freeze patch/time embeddings and all but the top `n` layers (the final norm trains with them)."""
        freeze_all_but_top(self.model, n, post_modules=("layernorm",))
