"""What a stage-1 model keeps of itself: the head and only the encoder weights that were trained.

A stage-1 checkpoint must stay small and loadable into a freshly built
encoder: pretrained backbone weights are rebuilt from the config, so only the
head, the fine-tuned encoder parameters (with the running statistics of the
modules that own them) and data-fitted buffers (an encoder's
`fitted_buffers`, e.g. standardisation stats) are stored, under
"<modality>.head.*" and "<modality>.encoder.*" as fusion.FusionModel reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from magtkd_stream.model.checkpoint import load_checkpoint, save_checkpoint
from magtkd_stream.config import Config
from magtkd_stream.encoders import build_encoder
from magtkd_stream.encoders.base import Encoder, UtteranceModel


def build_seeded_encoder(modality: str, cfg: Config) -> Encoder:
    """build_encoder, which seeds random-init backbones from cfg.seed (kept as the training-side name)."""
    return build_encoder(modality, cfg)


def trainable_encoder_state(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Trained parameters, buffers of the modules that own them, and the encoder's fitted buffers."""
    state: dict[str, torch.Tensor] = {}
    for mod_name, module in encoder.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not any(p.requires_grad for _, p in own):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for name, p in own:
            state[prefix + name] = p
        for name, b in module.named_buffers(recurse=False):
            if b is not None:
                state[prefix + name] = b
    for name in getattr(encoder, "fitted_buffers", ()):
        state[name] = getattr(encoder, name)
    return state


def model_state(model: UtteranceModel) -> dict[str, torch.Tensor]:
    """Trainable state of a stage-1 model as "head.*" and "encoder.*" (CPU copies)."""
    out = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    out.update({f"encoder.{k}": v for k, v in trainable_encoder_state(model.encoder).items()})
    return {k: v.detach().to("cpu").clone() for k, v in out.items()}


def load_model_state(model: UtteranceModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load what model_state produced; every encoder key must exist in the encoder."""
    head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    model.head.load_state_dict(head)
    if enc:
        result = model.encoder.load_state_dict(enc, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"encoder state has keys the {type(model.encoder).__name__} lacks: "
                             f"{result.unexpected_keys[:5]}")
        if hasattr(model.encoder, "fitted"):
            model.encoder.fitted = True


class TrainableView(nn.Module):
    """Exposes only a model's trainable state, so resume files stay small for big backbones."""

    def __init__(self, model: UtteranceModel) -> None:
        super().__init__()
        self._target = [model]  # a list, so the model is not registered as a submodule

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return model_state(self._target[0])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        load_model_state(self._target[0], state_dict)


def save_stage1_checkpoint(
    path: str | Path, model: UtteranceModel, cfg: Config, labels: Sequence[str],
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """A magtkd_stream checkpoint with "<modality>.head.*", "<modality>.encoder.*" and encoder_dims."""
    m = model.modality
    state = model_state(model)
    modules = {
        f"{m}.head": {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")},
        f"{m}.encoder": {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")},
    }
    meta = {"encoder_dims": {m: int(model.encoder.dim)}, "stage": 1, "modality": m, **dict(extra or {})}
    return save_checkpoint(path, modules, cfg, labels, extra=meta)


def load_stage1_model(
    path: str | Path,
    modality: Optional[str] = None,
    cfg: Optional[Config] = None,
    encoder: Optional[Encoder] = None,
) -> UtteranceModel:
    """Rebuild a stage-1 model: the encoder from config (or the one given), then the stored state.

    cfg defaults to the checkpoint's own configuration.
    """
    ck = load_checkpoint(path)
    m = modality or ck.extra.get("modality")
    if m is None:
        raise ValueError(f"{path}: the checkpoint does not say its modality; pass modality=")
    dims = ck.extra.get("encoder_dims", {})
    if m not in dims:
        raise ValueError(f"{path} holds no stage-1 {m} model (encoder_dims has {sorted(dims)})")
    cfg = cfg or ck.config
    enc = encoder if encoder is not None else build_seeded_encoder(m, cfg)
    if int(enc.dim) != int(dims[m]):
        raise ValueError(f"{path}: {m} encoder width {dims[m]} in the checkpoint, {enc.dim} in the built encoder")
    model = UtteranceModel(enc, cfg.feature_dim, len(ck.labels))
    state = {f"head.{k}": v for k, v in ck.state_dict(f"{m}.head").items()}
    state.update({f"encoder.{k}": v for k, v in ck.state_dict(f"{m}.encoder").items()})
    load_model_state(model, state)
    return model.eval()
