"""Who a token is: its tenant and roles, from the config, a tokens file or plain token values.

Tenancy is what keeps one customer's transcripts away from another's: a
subscriber reads only the sessions of its own tenant. A plain token (from
--token, MAGTKD_TOKENS or a bare string in the config) is its own tenant with
the publish and subscribe roles, so existing set-ups are isolated without any
new configuration. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from magtkd_stream.config import ConfigError

ROLES: tuple[str, ...] = ("publish", "subscribe", "admin")
DEFAULT_ROLES: frozenset[str] = frozenset({"publish", "subscribe"})
TENANT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def own_tenant(token: str) -> str:
    """The tenant of a plain token: derived from it, so it is stable, but never reveals it."""
    return "token-" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class TokenSpec:
    """One accepted token; tenant "" means its own tenant (as a plain token)."""

    token: str = field(repr=False)
    tenant: str = ""
    roles: frozenset[str] = DEFAULT_ROLES

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ConfigError("gateway.tokens: every token must be a non-empty string")
        if not isinstance(self.tenant, str) or (self.tenant and not TENANT_ID.fullmatch(self.tenant)):
            raise ConfigError(
                f"gateway.tokens: tenant {self.tenant!r} must be 1-64 of A-Z a-z 0-9 _ . - (or left out: own tenant)"
            )
        roles = frozenset(self.roles)
        unknown = sorted(roles - set(ROLES))
        if unknown or not roles:
            raise ConfigError(f"gateway.tokens: roles must be a non-empty list from {list(ROLES)}, got {sorted(roles)}")
        object.__setattr__(self, "roles", roles)

    @classmethod
    def from_value(cls, value: Any, where: str = "gateway.tokens") -> "TokenSpec":
        """A plain token string, or a mapping {token, tenant?, roles?}."""
        if isinstance(value, TokenSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"token", "tenant", "roles"})
            if unknown:
                raise ConfigError(f"{where}: unknown key {unknown[0]!r} in a token entry; known: token, tenant, roles")
            roles = value.get("roles", sorted(DEFAULT_ROLES))
            if isinstance(roles, str) or not isinstance(roles, Iterable):
                raise ConfigError(f"{where}: roles must be a list from {list(ROLES)}, got {roles!r}")
            return cls(value.get("token", ""), value.get("tenant", "") or "", frozenset(roles))
        raise ConfigError(f"{where}: a token entry must be a string or a mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class Identity:
    """What an accepted token may do."""

    tenant: str
    roles: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.roles

    def may(self, role: str) -> bool:
        return role in self.roles or (role == "subscribe" and self.admin)


def load_tokens_file(path: Union[str, Path]) -> list[TokenSpec]:
    """A YAML (or JSON) list of token entries, or a mapping {tokens: [...]}."""
    import yaml

    where = f"gateway.tokens_file {str(path)!r}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML/JSON ({exc})") from None
    if isinstance(data, Mapping) and set(data) == {"tokens"}:
        data = data["tokens"]
    if not isinstance(data, list):
        raise ConfigError(f"{where}: expected a list of token entries ({{token, tenant, roles}}), got {type(data).__name__}")
    return [TokenSpec.from_value(v, where) for v in data]


class TokenTable:
    """Accepted tokens -> Identity. An explicit entry (tenant or roles given) wins over plain repeats of the token."""

    def __init__(self, specs: Iterable[TokenSpec]) -> None:
        chosen: dict[str, TokenSpec] = {}
        for spec in specs:
            old = chosen.get(spec.token)
            plain = spec.tenant == "" and spec.roles == DEFAULT_ROLES
            if old is None or (old.tenant == "" and old.roles == DEFAULT_ROLES):
                chosen[spec.token] = spec
            elif not plain and old != spec:
                raise ConfigError("gateway.tokens: one token is listed twice with different tenants or roles")
        self._entries = [
            (tok.encode("utf-8", "surrogatepass"), Identity(s.tenant or own_tenant(tok), s.roles))
            for tok, s in chosen.items()
        ]
        self.tokens: tuple[str, ...] = tuple(chosen)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Optional[Identity]:
        """The identity of `token`, or None; checks every entry so timing does not tell which one matched."""
        given = token.encode("utf-8", "surrogatepass")
        found: Optional[Identity] = None
        for accepted, identity in self._entries:
            if hmac.compare_digest(given, accepted):
                found = identity
        return found
