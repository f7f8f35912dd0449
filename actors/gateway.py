"""Websocket gateway: authenticates clients, carries publisher media to the pipeline, events to subscribers.

Transport only. Recognition happens behind a SessionSink; events come back
through the EventBus, which sequences them and fans them out. Every connection
runs in its own tasks with bounded queues, so a slow, silent or misbehaving
client is answered or dropped on its own connection and no other session waits
for it. The wire format is docs/PROTOCOL.md (magtkd_stream/wire/protocol.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from actors.gateway_auth import Identity, token_table
from actors.gateway_guard import ConnectionGuard, remote_host
from actors.gateway_publisher import PublisherSession
from actors.gateway_rooms import Conversations
from magtkd_stream.wire.bus import ALL, EventBus, Subscription, SubscriptionDropped
from magtkd_stream.config import ConfigError, GatewayConfig
from magtkd_stream.config.gateway import TOKENS_ENV
from magtkd_stream.wire.events import control, dumps, error_message
from magtkd_stream.wire.protocol import (
    CLOSE_DROPPED,
    CLOSE_SHUTDOWN,
    PROTOCOL_VERSION,
    EndMessage,
    PingMessage,
    ProtocolError,
    PublisherHello,
    SubscriberHello,
    parse_client_text,
)

log = logging.getLogger(__name__)

PublishFn = Callable[[str, Mapping[str, Any]], int]


class SessionSink(Protocol):
    """What the recognition pipeline implements to receive one publisher session's media.

    The gateway calls, per session and in this order: open, then audio/video as they arrive
    (awaited one at a time, in arrival order), then end exactly once (also after a disconnect,
    idle timeout or error). Events go out through the `publish` callable given to attach():
    publish(session, event) -> seq, synchronous, on the gateway's event loop thread. Every event
    of a session must be published before end() returns; the gateway then publishes session_end.
    """

    def attach(self, publish: PublishFn) -> None: ...

    async def open(self, session: str, speaker: Optional[str], video: bool,
                   conversation: Optional[str] = None, names: Sequence[str] = ()) -> None:
        """conversation: the session is a participant of it (one context window with its other participants);
        names: labels for the voices a diarizing sink tells apart, in order of appearance."""

    async def audio(self, session: str, samples: np.ndarray, wall: float) -> None:
        """samples: float32, mono, 16 kHz, in [-1, 1); continuous across calls. wall: arrival time (time.time())."""

    async def video(self, session: str, ts: float, frame_bgr: np.ndarray) -> None:
        """ts: media seconds from session start (non-decreasing); frame_bgr: uint8 (H, W, 3)."""

    async def end(self, session: str) -> None: ...




def _hard_cap(limit: int) -> int:
    """Messages between our limit and this cap get a clear "oversized" error; beyond it websockets closes 1009."""
    return max(2 * limit, limit + 65536)


def _close_reason(text: str) -> str:
    """Websocket close reasons are limited to 123 UTF-8 bytes."""
    raw = text.encode("utf-8")[:123]
    return raw.decode("utf-8", errors="ignore")


class Gateway:
    """The websocket server. `sink` receives media; `bus` (built from config if omitted) carries events."""

    def __init__(self, config: GatewayConfig, sink: SessionSink, bus: Optional[EventBus] = None) -> None:
        self.config = config
        self.auth = token_table(config)
        self.ssl = config.ssl_context()
        if not len(self.auth):
            raise ConfigError(
                f"gateway: no tokens configured; set gateway.tokens or the {TOKENS_ENV} environment variable"
            )
        self.bus = bus or EventBus(
            replay_buffer=config.replay_buffer,
            subscriber_queue=config.subscriber_queue,
            ended_sessions_kept=config.ended_sessions_kept,
            ended_session_ttl_s=config.ended_session_ttl_s,
            validate=config.validate_events,
        )
        self.sink = sink
        sink.attach(self.bus.publish)
        self.decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jpeg-decode")
        self.stopping = False
        self._server = None
        self._by_token: dict[str, set[str]] = {}
        self._publishers: dict[ServerConnection, PublisherSession] = {}
        self._subscribers: dict[ServerConnection, Subscription] = {}
        self._subs_by_token: dict[str, int] = {}  # subscriber connections per token
        self.conversations = Conversations()  # the live conversations publishers joined
        self._handlers: set[asyncio.Task] = set()
        self.errors_sent: collections.Counter[str] = collections.Counter()  # by code, for the metrics
        self.guard = ConnectionGuard(
            config.max_connections,
            config.max_connections_per_address,
            config.hello_rate_per_address,
            config.hello_burst_per_address,
        )

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            # Until its hello is accepted a connection may only send small messages (raised in _handle).
            max_size=_hard_cap(cfg.hello_limit),
            compression=None,  # audio and JPEG do not compress; saves CPU per frame
            close_timeout=cfg.close_timeout_s,
            origins=[*cfg.allowed_origins, None] if cfg.allowed_origins else None,  # None: non-browser clients
            process_request=self.guard.process_request,
            create_connection=self.guard.connection_class(),
            ssl=self.ssl,
        )
        log.info("gateway listening on %s://%s:%d/", self.scheme, cfg.host, self.port)

    @property
    def scheme(self) -> str:
        return "wss" if self.ssl is not None else "ws"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("gateway not started")
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close cleanly: publishers first (their sessions flush and end), then subscribers once drained."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close(close_connections=False)
        pubs = list(self._publishers.items())
        await asyncio.gather(
            *(ws.close(CLOSE_SHUTDOWN, "server shutting down") for ws, _ in pubs), return_exceptions=True
        )
        await asyncio.gather(*(p.done.wait() for _, p in pubs))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.close_timeout_s
        while any(s.pending for s in self._subscribers.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # Subscribers, and connections that have not sent their hello yet.
        rest = set(self._subscribers) | set(self._server.connections)
        await asyncio.gather(*(ws.close(CLOSE_SHUTDOWN, "server shutting down") for ws in rest), return_exceptions=True)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.config.close_timeout_s)
        await self._server.wait_closed()
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self._server = None

    async def __aenter__(self) -> "Gateway":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ helpers shared with publishers

    def _claim(self, token: str, session: str) -> None:
        self.bus.check_new_session(session)  # session_taken, before any limit is counted
        owned = self._by_token.get(token, set())
        if len(owned) >= self.config.max_sessions_per_token:
            raise ProtocolError(
                "too_many_sessions",
                f"this token already has {len(owned)} live sessions (limit {self.config.max_sessions_per_token}); "
                "end one before opening another",
            )
        self._by_token[token] = owned | {session}

    def _release(self, token: str, session: str) -> None:
        owned = self._by_token.get(token)
        if owned is not None:
            owned.discard(session)
            if not owned:
                del self._by_token[token]

    def _check_size(self, msg: Union[str, bytes], hello: bool = False) -> None:
        size = len(msg.encode("utf-8", "surrogatepass")) if isinstance(msg, str) else len(msg)
        limit, name = (self.config.hello_limit, "max_hello_bytes") if hello else (self.config.max_message_bytes,
                                                                                   "max_message_bytes")
        if size > limit:
            what = "the first message (hello)" if hello else "message"
            raise ProtocolError("oversized", f"{what} of {size} bytes exceeds {name} {limit}")

    def _error_dict(self, exc: ProtocolError, session: Optional[str] = None) -> dict[str, Any]:
        self.errors_sent[exc.code] += 1
        return error_message(exc, session if session not in (None, ALL) else None)

    def _welcome(self, role: str, session: Optional[str], sessions: Optional[dict[str, Any]] = None,
                 conversation: Optional[str] = None) -> dict[str, Any]:
        msg = control("welcome", role=role, limits=self.config.limits())
        if session is not None:
            msg["session"] = session
        if conversation is not None:
            msg["conversation"] = conversation
        if sessions is not None:
            msg["sessions"] = sessions
        return msg

    async def _fatal(self, ws: ServerConnection, exc: ProtocolError, session: Optional[str] = None) -> None:
        """Answer a fatal error, then close this connection only."""
        try:
            await asyncio.wait_for(ws.send(dumps(self._error_dict(exc, session))), self.config.close_timeout_s)
            await ws.close(exc.close_code, _close_reason(f"{exc.code}: {exc.message}"))
        except (ConnectionClosed, asyncio.TimeoutError, TimeoutError):
            pass

    # ------------------------------------------------------------ connections

    async def _handle(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            accepted = await self._hello(ws)
            if accepted is None:
                return
            hello, identity = accepted
            ws.protocol.max_message_size = _hard_cap(self.config.max_message_bytes)
            role = "publisher" if isinstance(hello, PublisherHello) else "subscriber"
            target = hello.target if isinstance(hello, SubscriberHello) else repr(hello.session)
            log.info("%s of %s accepted from %s (tenant %s)", role, target, remote_host(ws) or "?", identity.tenant)
            if isinstance(hello, PublisherHello):
                pub = PublisherSession(self, ws, hello, hello.token, identity.tenant)
                self._publishers[ws] = pub
                try:
                    await pub.run()
                finally:
                    self._publishers.pop(ws, None)
            elif isinstance(hello, SubscriberHello):
                await self._run_subscriber(ws, hello, identity)
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug must cost this connection only
            log.exception("connection handler failed")
            await self._fatal(ws, ProtocolError("internal", f"server error: {type(exc).__name__}"))
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _hello(
        self, ws: ServerConnection
    ) -> Optional[tuple[Union[PublisherHello, SubscriberHello], Identity]]:
        """Read and check the first message; on any problem answer a fatal error and return None."""
        try:
            raw = await asyncio.wait_for(ws.recv(), self.config.idle_timeout_s)
            host = remote_host(ws)
            if not self.guard.hello_allowed(host):
                raise ProtocolError(
                    "too_many_hellos",
                    f"hellos from {host or 'this address'} arrive faster than hello_rate_per_address "
                    f"{self.config.hello_rate_per_address:g}/s (bursts of {self.config.hello_burst_per_address}); "
                    "wait before reconnecting",
                )
            self._check_size(raw, hello=True)
            if not isinstance(raw, str):
                raise ProtocolError("bad_message", "the first message must be a text hello, got a binary message")
            msg = parse_client_text(raw)
            if isinstance(msg, (EndMessage, PingMessage)):
                kind = "end" if isinstance(msg, EndMessage) else "ping"
                raise ProtocolError("bad_message", f"the first message must be hello, got {kind}")
            if self.stopping:
                raise ProtocolError("internal", "server is shutting down")
            identity = self.auth.lookup(msg.token)
            if identity is None:
                raise ProtocolError("bad_token", "token not accepted; ask the server operator for a valid token")
            role = "publish" if isinstance(msg, PublisherHello) else "subscribe"
            if not identity.may(role):
                raise ProtocolError(
                    "forbidden", f"this token may not {role}; its roles are {sorted(identity.roles)}"
                )
            return msg, identity
        except (asyncio.TimeoutError, TimeoutError):
            exc = ProtocolError("idle_timeout", f"no hello within {self.config.idle_timeout_s:g} s of connecting")
        except ProtocolError as err:
            exc = err
        await self._fatal(ws, exc)
        return None

    async def _run_subscriber(self, ws: ServerConnection, hello: SubscriberHello, identity: Identity) -> None:
        token = hello.token
        scope = None if identity.admin else identity.tenant  # admin: every tenant's sessions
        try:
            held = self._subs_by_token.get(token, 0)
            if held >= self.config.max_subscribers_per_token:
                raise ProtocolError(
                    "too_many_subscribers",
                    f"this token already has {held} subscriber connections (limit "
                    f"{self.config.max_subscribers_per_token}); close one, or subscribe once to '*' for every session",
                )
            sub = self.bus.subscribe(hello.session or "", hello.resume, scope, hello.conversation)
        except ProtocolError as exc:
            await self._fatal(ws, exc)
            return
        self._subscribers[ws] = sub
        self._subs_by_token[token] = self._subs_by_token.get(token, 0) + 1
        try:
            known = self.bus.sessions(scope)
            if hello.conversation is not None:
                members = set(self.bus.conversation_sessions(hello.conversation))
                covered = {k: v for k, v in known.items() if k in members}
            else:
                covered = known if hello.session == ALL else {k: v for k, v in known.items() if k == hello.session}
            await ws.send(dumps(self._welcome("subscriber", hello.session, covered, hello.conversation)))
            sender = asyncio.create_task(self._send_events(ws, sub))
            reader = asyncio.create_task(self._read_subscriber(ws))
            dropped = asyncio.create_task(sub.wait_dropped())
            done, pending = await asyncio.wait({sender, reader, dropped}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if dropped in done and sub.refusal is not None:
                await self._fatal(ws, sub.refusal, hello.session)  # None for a conversation
            elif dropped in done:
                try:
                    msg = dumps(control("dropped", reason=dropped.result()))
                    await asyncio.wait_for(ws.send(msg), self.config.close_timeout_s)
                    await ws.close(CLOSE_DROPPED, _close_reason("dropped: " + dropped.result()))
                except (ConnectionClosed, asyncio.TimeoutError, TimeoutError):
                    pass
            for task in done:
                if task is not dropped and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, ConnectionClosed):
                        raise exc
        finally:
            self._subscribers.pop(ws, None)
            sub.close()
            left = self._subs_by_token.get(token, 1) - 1
            if left > 0:
                self._subs_by_token[token] = left
            else:
                self._subs_by_token.pop(token, None)

    async def _send_events(self, ws: ServerConnection, sub: Subscription) -> None:
        try:
            async for item in sub:
                await ws.send(item.text)
        except SubscriptionDropped:
            await asyncio.Event().wait()  # the drop handler takes over

    async def _read_subscriber(self, ws: ServerConnection) -> None:
        """Subscribers only ever send ping; anything else is answered with a non-fatal error."""
        while True:
            raw = await ws.recv()
            try:
                self._check_size(raw)
            except ProtocolError as exc:
                await self._fatal(ws, exc)
                return
            try:
                if not isinstance(raw, str):
                    raise ProtocolError(
                        "not_publisher", "subscribers may not send binary (media) messages", fatal=False
                    )
                msg = parse_client_text(raw)
                if isinstance(msg, PingMessage):
                    await ws.send(dumps(control("pong") if msg.id is None else control("pong", id=msg.id)))
                    continue
                if isinstance(msg, EndMessage):
                    raise ProtocolError(
                        "not_publisher", "end is a publisher message; a subscriber just closes", fatal=False
                    )
                raise ProtocolError(
                    "bad_message", "hello was already accepted on this connection; send only ping", fatal=False
                )
            except ProtocolError as exc:
                if exc.fatal:
                    exc = ProtocolError(exc.code, exc.message, fatal=False)
                await ws.send(dumps(self._error_dict(exc)))


__all__ = ["Gateway", "GatewayConfig", "SessionSink", "PublishFn", "PROTOCOL_VERSION"]
