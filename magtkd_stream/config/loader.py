"""Reading configuration: YAML profiles in the config folder, `base:` inheritance, --set overrides, one builder.

A profile (lite, full, tiny) is nothing but a YAML file; code reads the typed
fields and never branches on the profile's name. A file may start from
another (`base: lite`) and change only what differs. Unknown keys and badly
typed or out-of-range values are errors that name the full dotted key.

The config folder is the repository's configs/ in a source checkout, or the
copy a wheel installs (share/magtkd-stream/configs under the environment's
prefix); MAGTKD_CONFIG_DIR overrides both.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from magtkd_stream.config.checks import ConfigError
from magtkd_stream.config.checks import check as _check
from magtkd_stream.config.profile import Config

CONFIG_DIR_ENV = "MAGTKD_CONFIG_DIR"


def find_config_dir() -> Path:
    """Where the profiles are: $MAGTKD_CONFIG_DIR, the source tree's configs/, or the installed copy."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    source = Path(__file__).resolve().parents[2] / "configs"
    if source.is_dir():
        return source
    for prefix in (sysconfig.get_path("data"), sys.prefix, sys.base_prefix):
        installed = Path(prefix) / "share" / "magtkd-stream" / "configs"
        if installed.is_dir():
            return installed
    return source  # missing: load_config says where it looked


CONFIG_DIR = find_config_dir()


def _path_of(name_or_path: str | Path, relative_to: Optional[Path] = None) -> Path:
    """A YAML path (relative to `relative_to` when given) or a name in the config folder."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return relative_to / p if relative_to is not None and not p.is_absolute() else p
    if relative_to is None and p.exists():
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def apply_override(tree: dict[str, Any], item: str) -> None:
    """Set KEY=VALUE (a dotted key) in a config tree; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.stage2.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Dataclass from a dict, recursively; unknown keys and wrong types name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; known keys here: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = _dataclass_type(cls, name)
        if sub is not None and hasattr(sub, "from_dict"):  # a section that reads its own mapping (stream)
            kwargs[name] = sub.from_dict(value)
        else:
            kwargs[name] = _build(sub, value, key) if sub is not None else _coerce(fields[name], value, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{prefix or '<root>'}: {exc}") from None


def _dataclass_type(cls: type, name: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory  # type: ignore[misc]
    if default is dataclasses.MISSING:
        return None
    probe = default()
    return type(probe) if dataclasses.is_dataclass(probe) else None


_SIMPLE = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(f: dataclasses.Field, value: Any, key: str) -> Any:
    """Check a leaf value against the field's annotation (strings, as `from __future__` gives)."""
    ann = str(f.type).replace("typing.", "")
    optional = ann.startswith("Optional[")
    base = ann[len("Optional[") : -1] if optional else ann
    if value is None:
        _check(optional, key, f"may not be empty (expected {base})")
        return None
    if base in _SIMPLE:
        want = _SIMPLE[base]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if want is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        _check(ok, key, f"expected {base}, got {type(value).__name__} {value!r}")
        return value
    if base.startswith("list["):
        _check(isinstance(value, list), key, f"expected a list, got {type(value).__name__}")
        if base == "list[float]":
            _check(all(isinstance(v, (int, float)) for v in value), key, "expected a list of numbers")
            return [float(v) for v in value]
        if base == "list[int]":
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            _check(ok, key, f"expected a list of integers, got {value!r}")
            return list(value)
        return value
    if base.startswith("dict["):
        _check(isinstance(value, dict), key, f"expected a mapping, got {type(value).__name__}")
        return value
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML/JSON-ready form of a config (what checkpoints and run folders store)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):  # token roles
        return sorted(value)
    return value


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from config_to_dict output (or any partial mapping)."""
    return _build(Config, data, "")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file; ConfigError naming the file when it is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


BASE_KEY = "base"  # a file may start from another profile: `base: lite` (a name in configs/ or a path)


def merge_trees(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merge key by key, any other value (lists too) replaces the base's."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def read_config_tree(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a tree, its `base:` chain resolved (the base's keys, then the file's own over them)."""
    data = read_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path.name}: {BASE_KEY}: expected a profile name or a YAML path, got {base!r}")
    base_path = _path_of(base, relative_to=path.parent)
    if not base_path.is_file():
        raise ConfigError(f"{path.name}: {BASE_KEY}: {base!r} not found (looked at {base_path}); "
                          f"known: {', '.join(available_configs())}")
    if base_path.resolve() in _seen + (path.resolve(),):
        chain = " -> ".join(p.name for p in _seen + (path, base_path))
        raise ConfigError(f"{path.name}: {BASE_KEY}: the chain comes back to itself ({chain})")
    return merge_trees(read_config_tree(base_path, _seen + (path.resolve(),)), data)


def available_configs() -> list[str]:
    """Names of the profiles and recipes in the config folder."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


RECIPE_PREFIX = "train_"  # configs/train_*.yaml are magtkd-train recipes; the rest are service profiles


def load_config(name_or_path: str | Path = "lite", overrides: Sequence[str] = ()) -> Config:
    """Load configs/<name>.yaml (or a path) and apply KEY=VALUE overrides (dotted keys).

    Raises ConfigError naming the unknown key, the file, or the bad value.
    """
    path = _path_of(name_or_path)
    if not path.exists():
        names = available_configs()
        profiles = [n for n in names if not n.startswith(RECIPE_PREFIX)]
        recipes = [n for n in names if n.startswith(RECIPE_PREFIX)]
        raise ConfigError(f"config {str(name_or_path)!r} not found (looked at {path}); profiles: "
                          f"{', '.join(profiles)} (training recipes, for magtkd-train: {', '.join(recipes)})")
    data = read_config_tree(path)
    for item in overrides:
        apply_override(data, item)
    try:
        return _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None
