"""The gateway's section of a profile (`stream.gateway`): address, tokens, TLS, origins and every limit.

Typed here, with the other sections, so that one loader checks a whole
profile; the websocket gateway (actors/gateway.py) only reads it. Token
entries are plain strings (each its own tenant) or {token, tenant, roles}.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from magtkd_stream.config.checks import ConfigError
from magtkd_stream.wire.protocol import MAX_JSON_DEPTH, MAX_STRING_CHARS, SAMPLE_RATES

TOKENS_ENV = "MAGTKD_TOKENS"
ROLES: tuple[str, ...] = ("publish", "subscribe", "admin")
DEFAULT_ROLES: frozenset[str] = frozenset({"publish", "subscribe"})
TENANT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


ORIGIN = re.compile(r"https?://[^/\s]+|null")  # "null": pages opened from file://


def _positive(value: float, key: str) -> None:
    if not value > 0:
        raise ConfigError(f"gateway.{key}: must be > 0, got {value!r}")


@dataclass
class GatewayConfig:
    """Limits and address of the gateway.

    `tokens` (plain strings, or TokenSpec / {token, tenant, roles} entries) is merged with the tokens
    file and the comma-separated MAGTKD_TOKENS env var; a plain token is its own tenant.
    """

    host: str = "127.0.0.1"
    port: int = 8765  # 0: an ephemeral port (read Gateway.port after start)
    tokens: tuple[Union[str, TokenSpec], ...] = ()
    tokens_file: str = ""  # YAML/JSON list of {token, tenant, roles}
    tls_cert: str = ""  # PEM certificate chain; with tls_key the gateway speaks wss://
    tls_key: str = ""
    allowed_origins: tuple[str, ...] = ()  # browser Origin values accepted; empty: any (no check)
    max_hello_bytes: int = 65536  # every message before the hello is accepted
    max_connections: int = 256  # open TCP connections in total
    max_connections_per_address: int = 32  # open TCP connections per remote IP address
    hello_rate_per_address: float = 10.0  # hellos per second per remote IP address ...
    hello_burst_per_address: int = 30  # ... with bursts up to this many
    max_message_bytes: int = 1 << 20
    max_video_fps: float = 30.0
    max_video_pixels: int = 3840 * 2160
    max_sessions_per_token: int = 4
    max_subscribers_per_token: int = 16
    idle_timeout_s: float = 30.0
    subscriber_queue: int = 256
    replay_buffer: int = 1024
    inbound_queue: int = 256  # per session: audio chunks + decoded frames waiting for the pipeline
    ended_sessions_kept: int = 256
    ended_session_ttl_s: float = 600.0
    close_timeout_s: float = 5.0
    validate_events: bool = True

    def __post_init__(self) -> None:
        self.tokens = tuple(t if isinstance(t, str) else TokenSpec.from_value(t) for t in self.tokens)
        if not all(isinstance(t, TokenSpec) or (isinstance(t, str) and t) for t in self.tokens):
            raise ConfigError("gateway.tokens: every token must be a non-empty string")
        for key in ("tokens_file", "tls_cert", "tls_key"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"gateway.{key}: expected a path string, got {getattr(self, key)!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("gateway.tls_cert / tls_key: give both (certificate chain and private key) or neither")
        self.allowed_origins = tuple(self.allowed_origins)
        for origin in self.allowed_origins:
            if not isinstance(origin, str) or not ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"gateway.allowed_origins: {origin!r} is not an origin; write scheme://host[:port] "
                    "without a path, e.g. https://app.example.com"
                )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"gateway.port: must be in [0, 65535], got {self.port}")
        for key in (
            "max_message_bytes",
            "max_video_fps",
            "max_video_pixels",
            "max_sessions_per_token",
            "max_subscribers_per_token",
            "idle_timeout_s",
            "subscriber_queue",
            "replay_buffer",
            "inbound_queue",
            "close_timeout_s",
            "max_hello_bytes",
            "max_connections",
            "max_connections_per_address",
            "hello_rate_per_address",
            "hello_burst_per_address",
        ):
            _positive(getattr(self, key), key)
        if self.ended_sessions_kept < 0 or self.ended_session_ttl_s < 0:
            raise ConfigError("gateway.ended_sessions_kept / ended_session_ttl_s: must be >= 0")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "GatewayConfig":
        """Build from a config mapping (Config.stream.gateway); unknown keys name the key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key gateway.{unknown[0]}; known keys: {sorted(fields)}")
        kwargs = dict(data)
        for key in ("tokens", "allowed_origins"):
            if key in kwargs:
                value = kwargs[key]
                kwargs[key] = tuple(value.split(",")) if isinstance(value, str) else tuple(value or ())
        for name, value in kwargs.items():
            default = fields[name].default
            if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, (int, float)) and not isinstance(value, (int, float))
            ) or (isinstance(default, str) and not isinstance(value, str)):
                raise ConfigError(f"gateway.{name}: expected {type(default).__name__}, got {value!r}")
        return cls(**kwargs)

    def token_specs(self) -> list[TokenSpec]:
        """Every accepted token entry, in order: the config, the tokens file, then MAGTKD_TOKENS."""
        specs = [TokenSpec.from_value(t) for t in self.tokens]
        if self.tokens_file:
            specs += load_tokens_file(self.tokens_file)
        specs += [TokenSpec(t.strip()) for t in os.environ.get(TOKENS_ENV, "").split(",") if t.strip()]
        return specs

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The TLS context for wss://, or None for plain ws://; a bad file is a ConfigError naming it."""
        if not self.tls_cert:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"gateway.tls_cert / tls_key: cannot load certificate {self.tls_cert!r} with key {self.tls_key!r} "
                f"({exc}); both must be PEM files and the key must match the certificate"
            ) from None
        return ctx

    @property
    def hello_limit(self) -> int:
        return min(self.max_hello_bytes, self.max_message_bytes)

    def limits(self) -> dict[str, Any]:
        return {
            "max_hello_bytes": self.hello_limit,
            "max_connections": self.max_connections,
            "max_connections_per_address": self.max_connections_per_address,
            "hello_rate_per_address": self.hello_rate_per_address,
            "hello_burst_per_address": self.hello_burst_per_address,
            "max_json_depth": MAX_JSON_DEPTH,
            "max_string_chars": MAX_STRING_CHARS,
            "max_message_bytes": self.max_message_bytes,
            "max_video_fps": self.max_video_fps,
            "max_sessions_per_token": self.max_sessions_per_token,
            "max_subscribers_per_token": self.max_subscribers_per_token,
            "idle_timeout_s": self.idle_timeout_s,
            "subscriber_queue": self.subscriber_queue,
            "replay_buffer": self.replay_buffer,
            "sample_rates": list(SAMPLE_RATES),
        }
