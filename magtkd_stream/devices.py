"""This machine's microphone (PyAudio) and camera (OpenCV), each captured on its own thread.

The server's local session (`serve --mic/--camera`) and the live demo client
read the same devices the same way; only what a user should do instead when a
device is missing differs, so each caller passes that as `hint`. Devices fail
in ways users can act on only when told which device failed and what to do, so
every open() raises DeviceError naming the device and the hint. Samples and
frames are handed to a callback on the capture thread itself: a timestamp taken
inside the callback is when the data was captured, not when a consumer got to
it. PyAudio and OpenCV are imported only when a device is opened, so importing
this module stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np

from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.wire.protocol import SAMPLE_RATES
from magtkd_stream.wire.resample import StreamResampler

log = logging.getLogger(__name__)

DEFAULT_HINT = "check that the device is connected and not in use by another program"


class DeviceError(RuntimeError):
    """A microphone, camera or media source could not be opened; the message names it and what to do instead."""


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence C libraries writing straight to file descriptor 2 (not Python's sys.stderr).

    PortAudio probes every ALSA/JACK backend when it starts and prints each
    failure there, burying the one message that matters.
    """
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


class Microphone:
    """A PyAudio input as mono PCM16 at 16 kHz, or at the device's own rate when it refuses 16 kHz.

    device: PyAudio input device index; None = the default input device.
    resample=False: emit int16 samples at `rate` (what a client declares in its hello);
    resample=True: emit float32 samples at 16 kHz (what the recognizer takes), whatever the device's rate.
    """

    def __init__(self, device: Optional[int] = None, frame_ms: int = 20, resample: bool = False,
                 hint: str = DEFAULT_HINT) -> None:
        self.device, self.frame_ms, self.resample, self.hint = device, frame_ms, resample, hint
        self.rate = SAMPLE_RATE
        self.name = "default input device" if device is None else f"input device {device}"
        self._pa: Any = None
        self._stream: Any = None
        self._emit: Optional[Callable[[np.ndarray], None]] = None
        self._resampler: Optional[StreamResampler] = None

    def open(self) -> int:
        """Open the device (not yet capturing); returns the device's sample rate."""
        try:
            import pyaudio
        except ImportError as exc:
            raise DeviceError(f"the microphone needs PyAudio, which is not installed ({exc}): `pip install pyaudio` "
                              f"(Debian: apt-get install portaudio19-dev first); or {self.hint}") from None
        try:
            with quiet_native_stderr():
                self._pa = pyaudio.PyAudio()
                info = (self._pa.get_default_input_device_info() if self.device is None
                        else self._pa.get_device_info_by_index(self.device))
        except (OSError, IOError, ValueError) as exc:
            self.close()
            raise DeviceError(f"no microphone: PyAudio found no {self.name} ({exc}); {self.hint}") from None
        self.name = f"microphone {info.get('name', '?')!r} (index {info.get('index', self.device)})"
        if int(info.get("maxInputChannels", 0)) < 1:
            self.close()
            raise DeviceError(f"{self.name} has no input channels; choose another input device, or {self.hint}")
        default = int(info.get("defaultSampleRate", 0) or 0)
        errors = []
        for rate in dict.fromkeys([SAMPLE_RATE] + ([default] if default in SAMPLE_RATES else [])):
            try:
                self._stream = self._pa.open(
                    format=pyaudio.paInt16, channels=1, rate=rate, input=True, input_device_index=info.get("index"),
                    frames_per_buffer=max(1, rate * self.frame_ms // 1000), stream_callback=self._callback,
                    start=False,
                )
            except (OSError, IOError, ValueError) as exc:
                errors.append(f"{rate} Hz: {exc}")
                continue
            self.rate = rate
            self._resampler = StreamResampler(rate) if self.resample else None
            return rate
        self.close()
        raise DeviceError(f"cannot open {self.name} for mono PCM16 capture ({'; '.join(errors)}); {self.hint}")

    def _callback(self, in_data: bytes, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        import pyaudio

        emit, resampler = self._emit, self._resampler
        if emit is not None and in_data:
            samples = resampler.process(in_data) if resampler is not None else np.frombuffer(in_data, np.int16).copy()
            if len(samples):
                emit(samples)
        return None, pyaudio.paContinue

    def start(self, emit: Callable[[np.ndarray], None]) -> None:
        """Start capturing; emit(samples) is called from PyAudio's thread every frame_ms."""
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


class Camera:
    """A camera through OpenCV, sampled at about `fps` frames a second by a reader thread."""

    def __init__(self, index: int = 0, fps: float = 10.0, hint: str = DEFAULT_HINT) -> None:
        self.index, self.fps, self.hint = index, fps, hint
        self.name = f"camera {index} (cv2.VideoCapture({index}))"
        self._cap: Any = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def open(self) -> tuple[int, int]:
        """Open the camera and read one frame; returns its (width, height)."""
        import cv2

        self._cap = cv2.VideoCapture(self.index)
        if not self._cap.isOpened():
            self.close()
            raise DeviceError(f"no camera: OpenCV could not open {self.name}; {self.hint}")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self.close()
            raise DeviceError(f"{self.name} opened but returned no frame (in use by another program?); {self.hint}")
        return frame.shape[1], frame.shape[0]

    def start(self, emit: Callable[[float, np.ndarray], None], t0: float) -> None:
        """Start the reader thread: emit(seconds since monotonic t0, BGR frame) about fps times a second."""
        self._thread = threading.Thread(target=self._run, args=(emit, t0), name=f"camera-{self.index}", daemon=True)
        self._thread.start()

    def _run(self, emit: Callable[[float, np.ndarray], None], t0: float) -> None:
        period, due = 1.0 / self.fps, time.monotonic()
        while not self._stop.is_set():
            ok, frame = self._cap.read()  # read every frame so the driver's buffer stays fresh
            if not ok:
                log.error("%s stopped delivering frames", self.name)
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
