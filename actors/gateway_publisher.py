"""One publisher connection: reads audio/video frames, feeds the pipeline sink, ends the session.

A reader task turns websocket messages into pipeline inputs (PCM16 resampled to
16 kHz float32; JPEG decoded to BGR off the event loop) and a worker task hands
them to the sink in order. The bounded queue between them sheds video first and
lets audio push back on this client alone; every error is answered on this
connection and never touches another session.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Optional

from websockets.exceptions import ConnectionClosed

from actors.gateway_inbound import END, Inbound, InboundQueue, RateLimiter, Throttle, check_jpeg_header, decode_jpeg
from magtkd_stream.wire.events import control, dumps, make_session_end, make_session_start
from magtkd_stream.wire.protocol import (
    AudioChunk,
    EndMessage,
    PingMessage,
    ProtocolError,
    PublisherHello,
    parse_binary,
    parse_client_text,
)
from magtkd_stream.wire.resample import StreamResampler

if TYPE_CHECKING:
    from actors.gateway import Gateway

log = logging.getLogger(__name__)


def _nonfatal(exc: ProtocolError) -> ProtocolError:
    """After a successful hello, a malformed message is dropped, not fatal."""
    return exc if not exc.fatal else ProtocolError(exc.code, exc.message, fatal=False)


class PublisherSession:
    """Runs one publisher connection from its accepted hello to the session_end event."""

    def __init__(self, gateway: "Gateway", ws, hello: PublisherHello, token: str, tenant: Optional[str] = None) -> None:
        self.gw = gateway
        self.tenant = tenant
        self.cfg = gateway.config
        self.ws = ws
        self.hello = hello
        self.token = token
        self.session = hello.session
        self.queue = InboundQueue(self.cfg.inbound_queue)
        self.resampler = StreamResampler(hello.sample_rate)
        self.limiter = RateLimiter(self.cfg.max_video_fps)
        self.throttle = Throttle(1.0)
        self.samples_in = 0
        self.video_frames = 0
        self.video_refused = 0
        self.last_ts = -math.inf
        self.ending = False
        self.started = False  # this connection owns the session on the bus
        self.end_seq: Optional[int] = None
        self.sink_opened = False
        self.sink_ended = False
        self.done = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        bus, sink = self.gw.bus, self.gw.sink
        conversation = self.hello.conversation
        try:
            self.gw._claim(self.token, self.session)
        except ProtocolError as exc:
            await self.gw._fatal(self.ws, exc, self.session)
            self.done.set()
            return
        reason = "error"
        joined = False
        try:
            try:
                offset = 0.0
                if conversation is not None:  # the prompt and the window tell participants apart by name
                    offset = self.gw.conversations.join(conversation, self.session,
                                                        self.hello.speaker or self.session, self.tenant)
                    joined = True
                bus.start_session(
                    self.session,
                    make_session_start(
                        self.session, self.hello.speaker, self.hello.video, self.hello.sample_rate, time.time(),
                        conversation, offset,
                    ),
                    self.tenant,
                )
            except ProtocolError as exc:
                await self.gw._fatal(self.ws, exc, self.session)
                return
            self.started = True
            try:
                await sink.open(self.session, self.hello.speaker, self.hello.video, conversation,
                                self.hello.speakers)
            except Exception as exc:  # the pipeline refused the session: fatal for it alone
                log.exception("sink.open failed for session %s", self.session)
                self._end_bus("error")
                await self.gw._fatal(self.ws, ProtocolError("internal", f"pipeline could not open the session: {exc}"))
                return
            self.sink_opened = True
            await self.ws.send(dumps(self.gw._welcome("publisher", self.session, conversation=conversation)))
            reason = await self._stream()
        except ConnectionClosed:
            reason = "disconnected"
        finally:
            if self.sink_opened and not self.sink_ended:  # left before the worker could end the sink
                self.sink_ended = True
                try:
                    await sink.end(self.session)
                except Exception:
                    log.exception("sink.end failed on session %s", self.session)
            if self.started and self.end_seq is None:  # paths that ended before the worker existed
                self._end_bus("server_stopping" if self.gw.stopping else reason)
            if joined:
                self.gw.conversations.leave(self.session)
            self.gw._release(self.token, self.session)
            self.done.set()

    async def _stream(self) -> str:
        worker = asyncio.create_task(self._work(), name=f"sink:{self.session}")
        reader = asyncio.create_task(self._read(), name=f"read:{self.session}")
        await asyncio.wait({worker, reader}, return_when=asyncio.FIRST_COMPLETED)
        read_failure: Optional[BaseException] = None
        if not reader.done():  # the worker stopped first: the pipeline failed on this session
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            reason = "error"
        else:
            reason = reader.result() if reader.exception() is None else "error"
            if reader.exception() is not None:
                read_failure = reader.exception()
                log.error("publisher reader of %s failed", self.session, exc_info=read_failure)
        if reason != "end" and not worker.done():  # flush what was received, then let the sink end
            await self._put_tail()
        after_end = asyncio.create_task(self._read_after_end()) if reason == "end" else None
        failure: Optional[BaseException] = None
        try:
            await worker
        except Exception as exc:
            failure = exc
        if after_end is not None:
            after_end.cancel()
            await asyncio.gather(after_end, return_exceptions=True)
        if failure is not None:
            log.error("pipeline failed on session %s: %s", self.session, failure, exc_info=failure)
            if not self.sink_ended:  # let the pipeline release the session's state
                self.sink_ended = True
                try:
                    await self.gw.sink.end(self.session)
                except Exception:
                    log.exception("sink.end failed after an earlier failure on session %s", self.session)
            self._end_bus("error")
            detail = f"{type(failure).__name__}: {failure}"[:200]
            await self.gw._fatal(self.ws, ProtocolError("internal", f"the pipeline failed on this session ({detail})"))
            return "error"
        if self.gw.stopping and reason == "disconnected":
            reason = "server_stopping"
        seq = self._end_bus(reason)
        if read_failure is not None:  # a server bug on this connection: say so instead of closing silently
            await self.gw._fatal(
                self.ws,
                ProtocolError("internal", f"server error while reading this session's messages: "
                                          f"{type(read_failure).__name__}"),
                self.session,
            )
        if reason == "end":
            try:
                await self.ws.send(dumps(control("ended", session=self.session, last_seq=seq)))
                await self.ws.close(1000, "session ended")
            except ConnectionClosed:
                pass
        return reason

    def _end_bus(self, reason: str) -> int:
        if self.end_seq is not None:
            return self.end_seq
        self.end_seq = self.gw.bus.end_session(
            self.session,
            make_session_end(
                self.session,
                reason,
                self.samples_in / self.hello.sample_rate,
                self.video_frames,
                self.video_refused + self.queue.shed,
                time.time(),
            ),
        )
        return self.end_seq

    async def _put_tail(self) -> None:
        tail = self.resampler.flush()
        if len(tail):
            await self.queue.put(Inbound("audio", samples=tail, wall=time.time()))
        await self.queue.put(END)

    async def _work(self) -> None:
        """Hand queued inputs to the sink in order; returns after sink.end()."""
        sink = self.gw.sink
        try:
            while True:
                item = await self.queue.get()
                if item.kind == "audio":
                    await sink.audio(self.session, item.samples, item.wall)
                elif item.kind == "video":
                    await sink.video(self.session, item.ts, item.frame)
                    self.video_frames += 1
                else:
                    self.sink_ended = True
                    await sink.end(self.session)
                    return
        finally:
            self.queue.close()

    # ------------------------------------------------------------ reading

    async def _recv(self, timeout: Optional[float]):
        if timeout is None:
            return await self.ws.recv()
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def _read(self) -> str:
        """Read until end, disconnect, idle timeout or a fatal error; returns the session_end reason."""
        while True:
            try:
                msg = await self._recv(self.cfg.idle_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                exc = ProtocolError(
                    "idle_timeout",
                    f"no message for {self.cfg.idle_timeout_s:g} s; send audio, video or ping to stay connected",
                )
                await self.gw._fatal(self.ws, exc, self.session)
                return "idle_timeout"
            except ConnectionClosed:
                return "disconnected"
            try:
                self.gw._check_size(msg)
            except ProtocolError as exc:
                await self.gw._fatal(self.ws, exc, self.session)
                return "error"
            try:
                if isinstance(msg, str):
                    if await self._on_text(msg):
                        return "end"
                else:
                    await self._on_binary(msg)
            except ProtocolError as exc:
                await self._error(_nonfatal(exc))

    async def _read_after_end(self) -> None:
        """While the pipeline flushes: answer pings, refuse further frames with after_end."""
        while True:
            try:
                msg = await self._recv(None)
            except ConnectionClosed:
                return
            try:
                if isinstance(msg, str):
                    parsed = parse_client_text(msg)
                    if isinstance(parsed, PingMessage):
                        await self._pong(parsed)
                        continue
                    what = "end was already received"
                else:
                    what = f"a {len(msg)}-byte frame arrived after end"
                raise ProtocolError(
                    "after_end", f"{what}; session {self.session!r} is flushing and accepts nothing more", fatal=False
                )
            except ProtocolError as exc:
                await self._error(_nonfatal(exc))

    async def _error(self, exc: ProtocolError) -> None:
        try:
            await self.ws.send(dumps(self.gw._error_dict(exc, self.session)))
        except ConnectionClosed:
            pass

    async def _pong(self, ping: PingMessage) -> None:
        msg = control("pong") if ping.id is None else control("pong", id=ping.id)
        await self.ws.send(dumps(msg))

    async def _on_text(self, raw: str) -> bool:
        """Handle a text message; True when it was end."""
        parsed = parse_client_text(raw)
        if isinstance(parsed, EndMessage):
            self.ending = True
            await self._put_tail()
            return True
        if isinstance(parsed, PingMessage):
            await self._pong(parsed)
            return False
        raise ProtocolError(
            "bad_message", "hello was already accepted on this connection; send audio, video, ping or end"
        )

    async def _on_binary(self, data: bytes) -> None:
        frame = parse_binary(data)
        if isinstance(frame, AudioChunk):
            samples = self.resampler.process(frame.pcm)
            self.samples_in += len(frame.pcm) // 2
            if len(samples):
                await self.queue.put(Inbound("audio", samples=samples, wall=time.time()))
            return
        if not self.hello.video:
            self.video_refused += 1
            if self.throttle.ready("video_off"):
                raise ProtocolError(
                    "bad_message",
                    'video frame refused: this session\'s hello did not declare "video": true',
                    fatal=False,
                )
            return
        if not self.limiter.allow():
            self.video_refused += 1
            if self.throttle.ready("rate_limited"):
                raise ProtocolError(
                    "rate_limited",
                    f"video frames arrive faster than {self.cfg.max_video_fps:g} fps; extra frames are dropped "
                    f"({self.video_refused} refused so far)",
                    fatal=False,
                )
            return
        if frame.ts < self.last_ts:
            self.video_refused += 1
            raise ProtocolError(
                "bad_message",
                f"video timestamp {frame.ts:.3f} s goes back in time (previous {self.last_ts:.3f} s)",
                fatal=False,
            )
        try:
            check_jpeg_header(frame.jpeg, self.cfg.max_video_pixels)
            image = await asyncio.get_running_loop().run_in_executor(self.gw.decoder, decode_jpeg, frame.jpeg)
            if image is None:
                raise ProtocolError(
                    "bad_jpeg",
                    f"video frame at {frame.ts:.3f} s ({len(frame.jpeg)} bytes) does not decode as JPEG; dropped",
                    fatal=False,
                )
        except ProtocolError:
            self.video_refused += 1
            raise
        self.last_ts = frame.ts
        self.queue.put_video(Inbound("video", ts=frame.ts, frame=image))
