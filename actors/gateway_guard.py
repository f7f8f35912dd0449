"""Admission control of the gateway: connection caps in total and per remote address, hello rate per address.

Connections are counted from the moment TCP is accepted until it is lost, so a
client that never finishes its handshake still counts. Over a cap the opening
handshake is answered with a plain HTTP error (503 in total, 429 per address)
whose text names the limit: a refused client costs no websocket at all.
"""

from __future__ import annotations

import http
from collections import Counter
from typing import Any, Callable, Optional

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from actors.gateway_inbound import RateLimiter

MAX_TRACKED_ADDRESSES = 4096  # hello rate limiters kept; idle ones are forgotten first


def remote_host(ws: Any) -> str:
    """The remote IP address of a connection ("" when unknown, e.g. a Unix socket)."""
    try:
        peer = ws.remote_address
    except Exception:  # the transport is already gone
        return ""
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else ""


class ConnectionGuard:
    def __init__(
        self,
        max_connections: int,
        max_per_address: int,
        hello_rate: float,
        hello_burst: int,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.hello_rate = hello_rate
        self.hello_burst = hello_burst
        self._clock = clock
        self.open: dict[ServerConnection, str] = {}
        self.by_address: Counter[str] = Counter()
        self._hellos: dict[str, RateLimiter] = {}

    def opened(self, conn: ServerConnection) -> None:
        host = remote_host(conn)
        self.open[conn] = host
        self.by_address[host] += 1

    def closed(self, conn: ServerConnection) -> None:
        host = self.open.pop(conn, None)
        if host is not None:
            self.by_address[host] -= 1
            if self.by_address[host] <= 0:
                del self.by_address[host]

    def connection_class(self) -> type[ServerConnection]:
        """A ServerConnection that reports to this guard when TCP is accepted and lost."""
        guard = self

        class CountedConnection(ServerConnection):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                guard.opened(self)

            def connection_lost(self, exc: Optional[Exception]) -> None:
                try:
                    super().connection_lost(exc)
                finally:
                    guard.closed(self)

        return CountedConnection

    def process_request(self, conn: ServerConnection, request: Request) -> Optional[Response]:
        """websockets' process_request hook: refuse the handshake over a cap, else let it go on."""
        if len(self.open) > self.max_connections:
            return conn.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server already holds {len(self.open) - 1} connections (max_connections "
                f"{self.max_connections}); try again later\n",
            )
        host = self.open.get(conn, remote_host(conn))
        if self.by_address[host] > self.max_per_address:
            return conn.respond(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                f"{host or 'this address'} already holds {self.by_address[host] - 1} connections "
                f"(max_connections_per_address {self.max_per_address}); close one first\n",
            )
        return None

    def hello_allowed(self, host: str) -> bool:
        """Count one hello from `host`; False when it exceeds the per-address hello rate."""
        limiter = self._hellos.get(host)
        if limiter is None:
            if len(self._hellos) >= MAX_TRACKED_ADDRESSES:
                self._forget_idle()
            kwargs = {} if self._clock is None else {"clock": self._clock}
            limiter = self._hellos[host] = RateLimiter(self.hello_rate, burst=self.hello_burst, **kwargs)
        return limiter.allow()

    def _forget_idle(self) -> None:
        idle = [h for h, lim in self._hellos.items() if lim.full()]
        for host in idle or list(self._hellos)[: len(self._hellos) // 2]:
            del self._hellos[host]
