"""Live client for `magtkd-stream serve`: publishes the webcam and microphone (or a media file) and shows the emotions.

Two websocket connections (protocol v1): a subscriber to the session, opened
first so no event is missed, and the publisher of the session's audio (16 kHz
mono PCM16 in 20-40 ms frames) and video (JPEG, about 10 fps). The latest
emotion event is drawn over the picture in an OpenCV window: fused label,
probability bars, per-modality labels and the transcript. Quit with q or Esc
(or Ctrl-C): the client sends end and waits for the session's last events.

  python -m demo.live_client --token T --session me            # webcam + microphone
  python -m demo.live_client --token T --no-video              # microphone only
  python -m demo.live_client --token T --file demo/samples/conversation.mp4 --no-window
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TextIO

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from demo.live_messages import (
    JPEG_QUALITY, AudioFramer, EventView, check_hello, describe, end_message, publisher_hello, subscriber_hello,
    video_message,
)
from demo import live_sources
from demo.live_sources import AudioItem, VideoItem, iter_media, open_media
from demo.live_view import display_available, run_in_window
from magtkd_stream.devices import Camera, DeviceError, Microphone
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.wire.protocol import ProtocolError

log = logging.getLogger("demo.live_client")

DEFAULT_URL = "ws://127.0.0.1:8765/"
TOKEN_ENV = "MAGTKD_TOKENS"  # the server's variable too: a client on the same machine uses its first token


def default_token(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The first of the comma-separated $MAGTKD_TOKENS (None when unset or empty)."""
    env = os.environ if environ is None else environ
    tokens = [t.strip() for t in env.get(TOKEN_ENV, "").split(",") if t.strip()]
    return tokens[0] if tokens else None


class ServerError(RuntimeError):
    """The server could not be reached, refused the session, or ended it with a fatal error."""


@dataclass
class ClientOptions:
    token: str
    session: str
    url: str = DEFAULT_URL
    speaker: Optional[str] = None
    conversation: Optional[str] = None  # join it: one context with its other participants, and see their events
    video: bool = True
    file: Optional[Path] = None  # publish this media file instead of the devices
    fast: bool = False  # file only: as fast as the server's video rate limit allows
    window: bool = True
    camera: int = 0
    mic: Optional[int] = None
    fps: float = 10.0
    frame_ms: int = 20
    jpeg_quality: int = JPEG_QUALITY
    out: Optional[Path] = None  # JSONL of every message the subscriber receives
    wait_s: float = 60.0  # after end: how long to wait for the session's last events
    print_events: bool = True


@dataclass
class ClientResult:
    events: list[dict] = field(default_factory=list)  # subscriber messages, in arrival order
    errors: list[dict] = field(default_factory=list)  # error messages on either connection
    ended: Optional[dict] = None  # the publisher's "ended" message
    audio_seconds: float = 0.0  # audio sent
    video_frames: int = 0  # video frames sent


class LiveClient:
    """One publishing session plus its subscription; run() is a coroutine, the window lives in another thread."""

    def __init__(self, opts: ClientOptions, mic: Optional[Microphone] = None, camera: Optional[Camera] = None) -> None:
        """mic/camera: sources to use instead of the ones opts name (objects with the same open/start/close)."""
        if not 20 <= opts.frame_ms <= 40:
            raise ValueError(f"frame_ms must be in [20, 40] ms, got {opts.frame_ms}")
        if not 0 < opts.fps <= 30:
            raise ValueError(f"fps must be in (0, 30], got {opts.fps}")
        self.opts = opts
        self.view = EventView(session=opts.session)
        self.result = ClientResult()
        self._lock = threading.Lock()
        self._frame: Optional[np.ndarray] = None
        self._stop = threading.Event()
        self._limits: dict[str, Any] = {}
        self._out: Optional[TextIO] = None
        self._rate = SAMPLE_RATE  # of the audio sent, declared in the hello
        self._video = False  # whether video frames are sent
        self._given = (mic, camera)

    # -------------------------------------------------------------- shared with the window thread

    def request_stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> tuple[Optional[np.ndarray], EventView]:
        with self._lock:
            return self._frame, copy.deepcopy(self.view)

    def _show(self, frame: np.ndarray) -> None:
        with self._lock:
            self._frame = frame

    def _fold(self, msg: dict) -> None:
        with self._lock:
            self.view.update(msg)
        line = describe(msg)
        if line and self.opts.print_events:
            print(line, flush=True)

    # -------------------------------------------------------------- connections

    async def _connect(self, hello: str, role: str):
        from websockets.asyncio.client import connect

        url = self.opts.url
        try:
            ws = await connect(url, open_timeout=10, max_size=8 << 20, compression=None)
        except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
            raise ServerError(f"cannot connect to {url} ({exc}); is `magtkd-stream serve` running there?") from None
        except Exception as exc:  # websockets' InvalidURI / InvalidHandshake / InvalidStatus
            raise ServerError(f"cannot open a websocket to {url}: {exc}") from None
        await ws.send(hello)
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
        except Exception as exc:
            await ws.close()
            raise ServerError(f"{role}: no welcome from {url} ({type(exc).__name__}: {exc})") from None
        if reply.get("type") != "welcome":
            await ws.close()
            raise ServerError(f"{role} refused by the server: {reply.get('code')}: {reply.get('message', reply)}")
        return ws, reply

    async def _read_subscriber(self, ws) -> None:
        """Collect the session's events until its session_end (or the connection closes)."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.result.events.append(msg)
                if msg.get("type") == "error":
                    self.result.errors.append(msg)
                if self._out is not None:
                    self._out.write(json.dumps(msg, ensure_ascii=False) + "\n")
                self._fold(msg)
                if msg.get("type") == "session_end" and msg.get("session") == self.opts.session:
                    return
        except ConnectionClosed:
            return

    async def _read_publisher(self, ws) -> None:
        """Errors (printed; fatal ones stop the client) and the final "ended"."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "ended":
                    self.result.ended = msg
                elif msg.get("type") == "error":
                    self.result.errors.append(msg)
                    self._fold(msg)
                    if msg.get("fatal"):
                        self.request_stop()
        except ConnectionClosed:
            pass
        self.request_stop()

    # -------------------------------------------------------------- sending

    async def _send_item(self, ws, item, framer: AudioFramer) -> None:
        if isinstance(item, AudioItem):
            for msg in framer.push(item.pcm):
                await ws.send(msg)
            self.result.audio_seconds += len(item.pcm) / self._rate
        else:
            self._show(item.frame)
            if self._video:
                await ws.send(video_message(item.t, item.frame, self.opts.jpeg_quality))
                self.result.video_frames += 1

    async def _send_file(self, ws, framer: AudioFramer) -> None:
        """Publish the file at real-time pace (or, with fast, as quick as the video rate limit allows)."""
        assert self.opts.file is not None
        max_fps = float(self._limits.get("max_video_fps", 30.0))
        speed = max(1.0, 0.8 * max_fps / self.opts.fps) if self._video else float("inf")
        t0 = time.monotonic()
        for k, item in enumerate(iter_media(self.opts.file, self.opts.fps, self._video, self.opts.frame_ms)):
            if self._stop.is_set():
                return
            pace = 1.0 if not self.opts.fast else speed
            delay = t0 + item.t / pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif k % 50 == 0:
                await asyncio.sleep(0)  # let the readers run
            await self._send_item(ws, item, framer)

    async def _send_devices(self, ws, framer: AudioFramer, mic: Microphone, camera: Optional[Camera]) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        t0 = time.monotonic()

        def on_audio(pcm: np.ndarray) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, AudioItem(time.monotonic() - t0, pcm))

        def on_frame(ts: float, frame: np.ndarray) -> None:
            if queue.qsize() < 32:  # a stalled connection sheds video, never audio
                loop.call_soon_threadsafe(queue.put_nowait, VideoItem(ts, frame))

        mic.start(on_audio)
        if camera is not None:
            camera.start(on_frame, t0)
        while not self._stop.is_set():
            try:
                item = await asyncio.wait_for(queue.get(), 0.1)
            except (asyncio.TimeoutError, TimeoutError):
                continue
            await self._send_item(ws, item, framer)
        for source in (camera, mic):  # stop capturing, then send the audio already captured
            if source is not None:
                source.close()
        await asyncio.sleep(0)
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, AudioItem):
                await self._send_item(ws, item, framer)

    # -------------------------------------------------------------- the session

    def _open_sources(self) -> tuple[Optional[Microphone], Optional[Camera]]:
        """Open the devices (or check the file) before connecting, so device errors come first."""
        if self.opts.file is not None:
            _, has_video = open_media(self.opts.file)
            self._rate, self._video = SAMPLE_RATE, self.opts.video and has_video
            return None, None
        mic = self._given[0] or live_sources.microphone(self.opts.mic, self.opts.frame_ms)
        self._rate = mic.open()
        camera = None
        if self.opts.video:
            camera = self._given[1] or live_sources.camera(self.opts.camera, self.opts.fps)
            try:
                camera.open()
            except DeviceError:
                mic.close()
                raise
        self._video = camera is not None
        return mic, camera

    async def run(self) -> ClientResult:
        opts = self.opts
        check_hello(publisher_hello(opts.token, opts.session, speaker=opts.speaker,  # bad ids fail before any device
                                    conversation=opts.conversation))
        mic, camera = self._open_sources()
        hello = publisher_hello(opts.token, opts.session, self._rate, speaker=opts.speaker, video=self._video,
                                conversation=opts.conversation)
        sub = pub = None
        try:
            with contextlib.ExitStack() as stack:
                if opts.out is not None:
                    opts.out.parent.mkdir(parents=True, exist_ok=True)
                    self._out = stack.enter_context(open(opts.out, "w", encoding="utf-8"))
                sub, sub_welcome = await self._connect(
                    subscriber_hello(opts.token, opts.session, conversation=opts.conversation), "subscriber")
                self._fold(sub_welcome)
                pub, welcome = await self._connect(hello, "publisher")
                self._limits = welcome.get("limits", {})
                sub_task = asyncio.create_task(self._read_subscriber(sub))
                pub_task = asyncio.create_task(self._read_publisher(pub))
                await self._publish(pub, mic, camera)
                await asyncio.wait({pub_task}, timeout=opts.wait_s)
                await asyncio.wait({sub_task}, timeout=opts.wait_s if self.result.ended else 2.0)
                for task in (sub_task, pub_task):
                    task.cancel()
                await asyncio.gather(sub_task, pub_task, return_exceptions=True)
        finally:
            for source in (camera, mic):
                if source is not None:
                    source.close()
            for ws in (pub, sub):
                if ws is not None:
                    await ws.close()
        fatal = [e for e in self.result.errors if e.get("fatal")]
        if fatal:
            raise ServerError(f"the server ended the session: {fatal[0].get('code')}: {fatal[0].get('message')}")
        return self.result

    async def _publish(self, ws, mic: Optional[Microphone], camera: Optional[Camera]) -> None:
        from websockets.exceptions import ConnectionClosed

        framer = AudioFramer(self._rate * self.opts.frame_ms // 1000)
        try:
            if mic is None:
                await self._send_file(ws, framer)
            else:
                await self._send_devices(ws, framer, mic, camera)
            for msg in framer.flush():
                await ws.send(msg)
            await ws.send(end_message())
        except ConnectionClosed:
            log.warning("the server closed the publishing connection")


# ------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo.live_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"websocket URL of `magtkd-stream serve` (default {DEFAULT_URL})")
    p.add_argument("--token", default=default_token(),
                   help=f"client token (default: the first of ${TOKEN_ENV}, the variable `serve` reads)")
    p.add_argument("--session", default=None, help="session id, 1-64 of A-Z a-z 0-9 _ . - (default: live-<random>)")
    p.add_argument("--speaker", default=None, help="speaker name attached to the session's utterances")
    p.add_argument("--conversation", default=None,
                   help="join this conversation as one participant (one context window with the other participants, "
                        "whose events are shown too; give each a different --speaker)")
    p.add_argument("--no-video", action="store_true", help="publish audio only")
    p.add_argument("--file", type=Path, default=None, help="publish this media file instead of the microphone/camera")
    p.add_argument("--fast", action="store_true", help="with --file: faster than real time")
    p.add_argument("--no-window", action="store_true", help="print events only, no OpenCV window")
    p.add_argument("--camera", type=int, default=0, help="OpenCV camera index (default 0)")
    p.add_argument("--mic", type=int, default=None, help="PyAudio input device index (default: the default device)")
    p.add_argument("--fps", type=float, default=10.0, help="video frames per second to send (default 10)")
    p.add_argument("--frame-ms", type=int, default=20, help="audio frame length, 20-40 ms (default 20)")
    p.add_argument("--out", type=Path, default=None, help="write every received message as JSONL here")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the last events after end")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> ClientOptions:
    if not args.token:
        raise ValueError(f"no token: pass --token TOKEN or set {TOKEN_ENV} (the server's accepted tokens)")
    return ClientOptions(
        token=args.token, session=args.session or f"live-{secrets.token_hex(3)}", url=args.url, speaker=args.speaker,
        conversation=args.conversation,
        video=not args.no_video, file=args.file, fast=args.fast, window=not args.no_window, camera=args.camera,
        mic=args.mic, fps=args.fps, frame_ms=args.frame_ms, out=args.out, wait_s=args.wait,
    )


async def _run_headless(client: LiveClient) -> ClientResult:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not the main thread
        loop.add_signal_handler(signal.SIGINT, client.request_stop)
    return await client.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        opts = options_from_args(args)
        if opts.window and not display_available():
            log.warning("no display (DISPLAY is not set): no window, events are printed; --no-window silences this")
            opts.window = False
        client = LiveClient(opts)
        result = run_in_window(client) if opts.window else asyncio.run(_run_headless(client))
    except (ValueError, DeviceError, ProtocolError) as exc:
        print(f"live_client: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"live_client: {exc}", file=sys.stderr)
        return 1
    emotions = sum(1 for e in result.events if e.get("type") == "emotion")
    print(f"sent {result.audio_seconds:.1f} s audio and {result.video_frames} video frames; "
          f"received {emotions} emotion events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
