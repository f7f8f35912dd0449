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
from dataclasses import dataclass
from typing import Iterable, Optional

from magtkd_stream.config import ConfigError
from magtkd_stream.config.gateway import DEFAULT_ROLES, GatewayConfig, TokenSpec



def own_tenant(token: str) -> str:
    """The tenant of a plain token: derived from it, so it is stable, but never reveals it."""
    return "token-" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]




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


def token_table(config: GatewayConfig) -> TokenTable:
    """Every token the gateway accepts, with its tenant and roles: the config, the tokens file, then MAGTKD_TOKENS."""
    return TokenTable(config.token_specs())
