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
import contextlib
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Optional

import numpy as np

from magtkd_stream.bus import EventBus
from magtkd_stream.protocol import NATIVE_SAMPLE_RATE, SAMPLE_RATES, make_session_end, make_session_start
from magtkd_stream.resample import StreamResampler

log = logging.getLogger(__name__)

ALTERNATIVES = (
    "serve without --mic/--camera and publish from a client (python -m demo.live_client, or the web page), "
    "or replay a file with `magtkd-stream run FILE`"
)


class DeviceError(RuntimeError):
    """A local microphone or camera could not be opened; the message names it and what to do instead."""


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence C libraries writing straight to file descriptor 2 (not Python's sys.stderr)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LocalMic:
    """The default microphone through PyAudio, as float32 mono 16 kHz chunks (resampled if the device insists)."""

    def __init__(self, frame_ms: int = 20) -> None:
        self.frame_ms = frame_ms
        self.rate = NATIVE_SAMPLE_RATE
        self.name = "the default microphone"
        self._pa: Any = None
        self._stream: Any = None
        self._emit: Optional[Callable[[np.ndarray], None]] = None
        self._resampler: Optional[StreamResampler] = None

    def open(self) -> None:
        try:
            import pyaudio
        except ImportError as exc:
            raise DeviceError(
                f"--mic needs PyAudio, which is not installed ({exc}): pip install pyaudio "
                f"(Debian: apt-get install portaudio19-dev first); or {ALTERNATIVES}"
            ) from None
        try:
            with _quiet_native_stderr():  # PortAudio probes every ALSA/JACK backend and prints each failure
                self._pa = pyaudio.PyAudio()
                info = self._pa.get_default_input_device_info()
        except (OSError, IOError, ValueError) as exc:
            self.close()
            raise DeviceError(f"--mic: no microphone found on this machine ({exc}); {ALTERNATIVES}") from None
        self.name = f"microphone {info.get('name', '?')!r}"
        default = int(info.get("defaultSampleRate", 0) or 0)
        errors = []
        for rate in dict.fromkeys([NATIVE_SAMPLE_RATE] + ([default] if default in SAMPLE_RATES else [])):
            try:
                self._stream = self._pa.open(
                    format=pyaudio.paInt16, channels=1, rate=rate, input=True,
                    frames_per_buffer=max(1, rate * self.frame_ms // 1000), stream_callback=self._callback,
                    start=False,
                )
                self.rate = rate
                self._resampler = StreamResampler(rate)
                return
            except (OSError, IOError, ValueError) as exc:
                errors.append(f"{rate} Hz: {exc}")
        self.close()
        raise DeviceError(f"--mic: cannot capture mono PCM16 from {self.name} ({'; '.join(errors)}); {ALTERNATIVES}")

    def _callback(self, in_data: bytes, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        import pyaudio

        emit, resampler = self._emit, self._resampler
        if emit is not None and resampler is not None and in_data:
            samples = resampler.process(in_data)
            if len(samples):
                emit(samples)
        return None, pyaudio.paContinue

    def start(self, emit: Callable[[np.ndarray], None]) -> None:
        """emit(float32 16 kHz samples) is called from PyAudio's thread every frame_ms."""
        self._emit = emit
        self._stream.start_stream()

    def close(self) -> None:
        self._emit = None
        if self._stream is not None:
            try:
                self._stream.stop_stream()
                self._stream.close()
            except OSError:
                pass
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None


class LocalCamera:
    """Camera 0 through OpenCV, sampled at about `fps` frames a second by a reader thread."""

    def __init__(self, index: int = 0, fps: float = 10.0) -> None:
        self.index, self.fps = index, fps
        self._cap: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def open(self) -> None:
        import cv2

        self._cap = cv2.VideoCapture(self.index)
        if not self._cap.isOpened():
            self.close()
            raise DeviceError(f"--camera: no camera found on this machine (cv2.VideoCapture({self.index}) "
                              f"did not open); serve with --mic only, or {ALTERNATIVES}")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self.close()
            raise DeviceError(f"--camera: camera {self.index} opened but gave no frame (in use by another program?); "
                              f"serve with --mic only, or {ALTERNATIVES}")

    def start(self, emit: Callable[[float, np.ndarray], None], t0: float) -> None:
        """emit(seconds since t0 on the monotonic clock, BGR frame) from the reader thread."""
        self._thread = threading.Thread(target=self._run, args=(emit, t0), name="local-camera", daemon=True)
        self._thread.start()

    def _run(self, emit: Callable[[float, np.ndarray], None], t0: float) -> None:
        period, due = 1.0 / self.fps, time.monotonic()
        while not self._stop.is_set():
            ok, frame = self._cap.read()  # read every frame so the driver's buffer stays fresh
            if not ok:
                log.error("camera %d stopped delivering frames", self.index)
                return
            now = time.monotonic()
            if now >= due:
                emit(now - t0, frame)
                due = max(due + period, now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_devices(mic: bool, camera: bool) -> tuple[Optional[LocalMic], Optional[LocalCamera]]:
    """Open what was asked for, or raise DeviceError (closing whatever did open)."""
    if camera and not mic:
        raise DeviceError("--camera needs --mic: utterances are cut from the microphone's speech")
    m = c = None
    try:
        if mic:
            m = LocalMic()
            m.open()
        if camera:
            c = LocalCamera()
            c.open()
    except BaseException:
        for dev in (c, m):
            if dev is not None:
                dev.close()
        raise
    return m, c


class LocalSession:
    """Runs one session from local devices: bus start, sink open, capture -> sink, then flush and end."""

    def __init__(self, sink: Any, bus: EventBus, session: str, mic: LocalMic, camera: Optional[LocalCamera],
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
        self.bus.start_session(self.session, make_session_start(self.session, None, video, NATIVE_SAMPLE_RATE,
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
                self.session, reason, self.samples / NATIVE_SAMPLE_RATE, self.frames, self.shed, time.time()))
