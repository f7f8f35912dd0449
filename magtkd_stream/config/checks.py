"""The one error type of configuration and the checks that raise it, naming the full dotted key."""

from __future__ import annotations

from typing import Sequence


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ConfigError("<key>: <msg>") unless cond."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def one_of(value: str, allowed: Sequence[str], key: str) -> None:
    check(value in allowed, key, f"got {value!r}, expected one of {list(allowed)}")


def number(value: object) -> bool:
    """A YAML number (bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(value: object) -> bool:
    """A YAML integer (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)
