"""`serve --mic/--camera`: this machine's microphone and camera as one session, fed straight into the sink.

No websocket in between: capture threads (PyAudio's callback, an OpenCV
reader) hand samples and frames to the server's event loop, which pushes them
into the same SessionSink the gateway feeds and announces the session on the
gateway's EventBus, so websocket subscribers see it like any other session.
Devices are opened before anything else starts, and a missing one raises
DeviceError naming the device and the alternatives, so the server never comes
up half-configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Optional

from magtkd_stream.wire.bus import EventBus
from magtkd_stream.devices import Camera, DeviceError, Microphone
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.wire.events import make_session_end, make_session_start

log = logging.getLogger(__name__)

ALTERNATIVES = (
    "serve without --mic/--camera and publish from a client (python -m demo.live_client, or the web page), "
    "or replay a file with `magtkd-stream run FILE`"
)
CAMERA_HINT = f"serve with --mic only (no --camera), or {ALTERNATIVES}"


def open_devices(mic: bool, camera: bool) -> tuple[Optional[Microphone], Optional[Camera]]:
    """Open what was asked for, or raise DeviceError (closing whatever did open).

    The microphone emits float32 at 16 kHz (resampled if the device insists on
    another rate), which is what the session sink takes.
    """
    if camera and not mic:
        raise DeviceError("--camera needs --mic: utterances are cut from the microphone's speech")
    m = c = None
    try:
        if mic:
            m = Microphone(resample=True, hint=ALTERNATIVES)
            m.open()
        if camera:
            c = Camera(hint=CAMERA_HINT)
            c.open()
    except BaseException:
        for dev in (c, m):
            if dev is not None:
                dev.close()
        raise
    return m, c


class LocalSession:
    """Runs one session from local devices: bus start, sink open, capture -> sink, then flush and end."""

    def __init__(self, sink: Any, bus: EventBus, session: str, mic: Microphone, camera: Optional[Camera],
                 max_frames: int = 30) -> None:
        self.sink, self.bus, self.session = sink, bus, session
        self.mic, self.camera = mic, camera
        self.max_frames = max_frames  # frames waiting for the sink; beyond it new frames are shed, audio never
        self._items: deque[tuple[str, Any]] = deque()
        self._ready = asyncio.Event()
        self._waiting_frames = 0
        self._task: Optional[asyncio.Task] = None
        self.samples = 0
        self.frames = 0
        self.shed = 0

    def _put(self, item: tuple[str, Any]) -> None:
        if item[0] == "video":
            if self._waiting_frames >= self.max_frames:
                self.shed += 1
                return
            self._waiting_frames += 1
        self._items.append(item)
        self._ready.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        video = self.camera is not None
        self.bus.start_session(self.session, make_session_start(self.session, None, video, SAMPLE_RATE,
                                                                time.time()))
        await self.sink.open(self.session, None, video)
        t0 = time.monotonic()
        self._task = loop.create_task(self._pump(), name=f"local:{self.session}")
        # The arrival time is taken on the capture thread: latency counts from when the sound was captured.
        self.mic.start(lambda s: loop.call_soon_threadsafe(self._put, ("audio", (s, time.time()))))
        if self.camera is not None:
            self.camera.start(lambda ts, f: loop.call_soon_threadsafe(self._put, ("video", (ts, f))), t0)
        log.info("local session %r: %s%s", self.session, self.mic.name, " + camera" if video else "")

    async def _pump(self) -> None:
        while True:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
            kind, value = self._items.popleft()
            if kind == "audio":
                samples, wall = value
                await self.sink.audio(self.session, samples, wall)
                self.samples += len(samples)
            elif kind == "video":
                self._waiting_frames -= 1
                await self.sink.video(self.session, value[0], value[1])
                self.frames += 1
            else:
                return

    async def stop(self, reason: str = "end") -> None:
        """Stop capturing, push what was captured, flush the session's last utterance, end it on the bus."""
        self.mic.close()
        if self.camera is not None:
            self.camera.close()
        await asyncio.sleep(0)  # let callbacks already scheduled by the capture threads land first
        try:
            if self._task is not None:
                self._put(("end", None))
                await self._task
            await self.sink.end(self.session)
        finally:
            self.bus.end_session(self.session, make_session_end(
                self.session, reason, self.samples / SAMPLE_RATE, self.frames, self.shed, time.time()))
