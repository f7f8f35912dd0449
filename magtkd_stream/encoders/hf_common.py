"""Shared plumbing for encoders built on Hugging Face models: loading and partial freezing.

A model comes either from pretrained weights (a hub id, a local folder, or a
"package:<module>" reference) or, for tests and experiments, from a
`random_init` dict of config kwargs (with `model_type`), which needs no files.
Stage-1 fine-tuning trains only the top layers, so freezing must find a
model's layer stack without knowing the model family.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from torch import nn

from magtkd_stream.resources import resolve_model

logger = logging.getLogger(__name__)

# Attribute paths where transformer families keep their stack of layers.
_LAYER_PATHS = ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "transformer.layers")


def build_hf_model(model_ref: str, random_init: Optional[dict[str, Any]], what: str) -> nn.Module:
    """AutoModel from pretrained weights, or from a random-init config dict (no download)."""
    from transformers import AutoConfig, AutoModel

    if random_init is not None:
        kwargs = dict(random_init)
        model_type = kwargs.pop("model_type", None)
        if not model_type:
            raise ValueError(f"{what}.random_init must name a model_type (e.g. 'roberta'), got keys {sorted(kwargs)}")
        try:
            config = AutoConfig.for_model(model_type, **kwargs)
        except ValueError as exc:
            raise ValueError(f"{what}.random_init: {exc}") from None
        logger.info("%s: building random-init %s model", what, model_type)
        return AutoModel.from_config(config)
    path = resolve_model(model_ref)
    logger.info("%s: loading pretrained model %s", what, path)
    return AutoModel.from_pretrained(path)


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers, bottom first."""
    for path in _LAYER_PATHS:
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ValueError(
        f"cannot find the layer stack of {type(model).__name__}: looked for "
        f"{', '.join(_LAYER_PATHS)}; partial freezing supports models that keep their layers there"
    )


def freeze_all_but_top(model: nn.Module, n: int, post_modules: tuple[str, ...] = ()) -> int:
    """Freeze embeddings and everything but the top `n` layers (-1: train all, 0: freeze all).

    post_modules: names of top-level children applied after the layer stack
    (final norms) that train together with the top layers. Returns the number
    of trainable parameters.
    """
    if n < -1:
        raise ValueError(f"trainable layers must be >= -1 (-1 = all), got {n}")
    for p in model.parameters():
        p.requires_grad = n == -1
    if n > 0:
        layers = find_layers(model)
        if n > len(layers):
            raise ValueError(f"asked to train the top {n} layers but {type(model).__name__} has only {len(layers)}")
        for layer in layers[len(layers) - n :]:
            for p in layer.parameters():
                p.requires_grad = True
        for name in post_modules:
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                for p in module.parameters():
                    p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
