"""Checkpoint files: weights in safetensors, with the resolved config, labels, profile and version.

One file carries everything needed to rebuild the model exactly (nanoGPT style):
the safetensors header metadata holds a JSON document with the config, so
`serve` loads what `train` wrote without any other file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from magtkd_stream.config import Config, config_from_dict, config_to_dict

FORMAT_VERSION = 1
_META_KEY = "magtkd"


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the configuration that loads it."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds, after loading."""

    tensors: dict[str, torch.Tensor]
    config: Config
    labels: list[str]
    profile: str
    version: int
    extra: dict[str, Any]

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under `prefix.` with the prefix removed (one sub-module's weights)."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


def save_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    config: Config,
    labels: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write named modules' weights plus metadata to one .safetensors file (atomically)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        sd = mod.state_dict() if isinstance(mod, torch.nn.Module) else mod
        for k, v in sd.items():
            tensors[f"{name}.{k}"] = v.detach().to("cpu").contiguous()
    meta = {
        "version": FORMAT_VERSION,
        "profile": config.profile,
        "labels": list(labels),
        "config": config_to_dict(config),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    tmp.replace(path)
    return path


def _read_header(path: Path) -> str | None:
    """The checkpoint's metadata string (None: none); CheckpointError when the file is missing or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(_META_KEY)
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None


def _checked_meta(path: Path, raw: str | None, expect_labels: Sequence[str] | None,
                  expect_profile: str | None) -> dict[str, Any]:
    """The metadata, refused (CheckpointError) when absent, of another format, or for other labels or profile."""
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no '{_META_KEY}' metadata; not written by magtkd_stream")
    meta = json.loads(raw)
    version = int(meta.get("version", -1))
    if version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this build reads 1..{FORMAT_VERSION}")
    labels = list(meta["labels"])
    profile = str(meta["profile"])
    if expect_labels is not None and list(expect_labels) != labels:
        raise CheckpointError(
            f"checkpoint {path} was trained for labels {labels}, but the configuration expects {list(expect_labels)}"
        )
    if expect_profile is not None and expect_profile != profile:
        raise CheckpointError(
            f"checkpoint {path} was trained with encoder profile {profile!r}, "
            f"but the configuration uses profile {expect_profile!r}; use a checkpoint of that profile"
        )
    return meta


def check_checkpoint(path: str | Path, expect_labels: Sequence[str] | None = None,
                     expect_profile: str | None = None) -> None:
    """The checks of load_checkpoint on the file's header alone, without reading its tensors (a cheap refusal
    before anything starts)."""
    path = Path(path)
    _checked_meta(path, _read_header(path), expect_labels, expect_profile)


def load_checkpoint(
    path: str | Path,
    expect_labels: Sequence[str] | None = None,
    expect_profile: str | None = None,
) -> Checkpoint:
    """Read a checkpoint; refuse (CheckpointError) when labels or profile differ from what is expected."""
    from safetensors.torch import load_file

    path = Path(path)
    raw = _read_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
    meta = _checked_meta(path, raw, expect_labels, expect_profile)
    return Checkpoint(
        tensors=tensors,
        config=config_from_dict(meta["config"]),
        labels=list(meta["labels"]),
        profile=str(meta["profile"]),
        version=int(meta["version"]),
        extra=dict(meta.get("extra", {})),
    )


def model_id(path: str | Path, profile: str) -> str:
    """Stable id of a checkpoint: profile, file name and the first 12 hex digits of its SHA-256 (every event's
    `model`; training records it so that served vectors can be traced to the checkpoint that made them)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{profile}:{Path(path).name}@{digest.hexdigest()[:12]}"


def checkpoint_path(cfg: Config) -> str | None:
    """The checkpoint file the config names (None: run untrained); a missing file is a clear error."""
    if not cfg.checkpoint:
        return None
    from magtkd_stream.resources import resolve_model

    try:
        path = Path(resolve_model(cfg.checkpoint))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"checkpoint {cfg.checkpoint!r}: {exc}. Train one (magtkd-train) or run untrained with checkpoint=null"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {cfg.checkpoint!r} resolves to {path}, which is not a file; "
            "give a .safetensors checkpoint or run untrained with checkpoint=null"
        )
    from magtkd_stream.labels import label_set

    # The header only, so a damaged or foreign file is one clear CheckpointError before any model or actor starts.
    check_checkpoint(path, expect_labels=label_set(cfg.labels), expect_profile=cfg.profile)
    return str(path)
