"""Where the live client's media come from: the microphone (PyAudio), the webcam (OpenCV) or a media file (PyAV).

Devices fail in ways users can act on only when told which device failed and
what to do instead, so every open() raises DeviceError naming the device and
the alternatives (--no-video, --file FILE, `magtkd-stream run FILE`). Device
sources deliver from their own threads through a callback; the file source is a
plain iterator of timed items, paced by its caller.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from magtkd_stream.protocol import NATIVE_SAMPLE_RATE, SAMPLE_RATES

log = logging.getLogger(__name__)

NO_MIC_HINT = "use --file FILE to publish a media file instead, or run one locally with `magtkd-stream run FILE`"
NO_CAMERA_HINT = "use --no-video to publish the microphone only, --camera N for another camera, or --file FILE"


class DeviceError(RuntimeError):
    """A microphone, camera or media file could not be opened; the message says which and what to do."""


@dataclass(frozen=True)
class AudioItem:
    t: float  # media seconds of the first sample
    pcm: np.ndarray  # int16 mono at the source's sample rate


@dataclass(frozen=True)
class VideoItem:
    t: float  # media seconds
    frame: np.ndarray  # uint8 BGR (H, W, 3)


MediaItem = Union[AudioItem, VideoItem]


class MicSource:
    """The microphone through PyAudio: 16 kHz mono PCM16 (or the device's own rate if it refuses 16 kHz)."""

    def __init__(self, device: Optional[int] = None, frame_ms: int = 30) -> None:
        self.device, self.frame_ms = device, frame_ms
        self.rate = NATIVE_SAMPLE_RATE
        self.name = "default input device" if device is None else f"input device {device}"
        self._pa: Any = None
        self._stream: Any = None
        self._emit: Optional[Callable[[np.ndarray], None]] = None

    def open(self) -> int:
        """Open the device (not yet capturing); returns the sample rate to declare in the hello."""
        try:
            import pyaudio
        except ImportError as exc:
            raise DeviceError(f"PyAudio is not installed ({exc}); `pip install pyaudio` "
                              f"(Debian: apt-get install portaudio19-dev first), or {NO_MIC_HINT}") from None
        try:
            self._pa = pyaudio.PyAudio()
            info = (self._pa.get_default_input_device_info() if self.device is None
                    else self._pa.get_device_info_by_index(self.device))
        except (OSError, IOError, ValueError) as exc:
            self.close()
            raise DeviceError(f"no microphone: PyAudio found no {self.name} ({exc}); {NO_MIC_HINT}") from None
        self.name = f"microphone {info.get('name', '?')!r} (index {info.get('index', self.device)})"
        if int(info.get("maxInputChannels", 0)) < 1:
            self.close()
            raise DeviceError(f"{self.name} has no input channels; pick another with --mic N, or {NO_MIC_HINT}")
        rates = [NATIVE_SAMPLE_RATE] + [r for r in (int(info.get("defaultSampleRate", 0)),) if r in SAMPLE_RATES]
        errors = []
        for rate in dict.fromkeys(rates):
            try:
                self._stream = self._pa.open(
                    format=pyaudio.paInt16, channels=1, rate=rate, input=True, input_device_index=info.get("index"),
                    frames_per_buffer=max(1, rate * self.frame_ms // 1000), stream_callback=self._callback, start=False,
                )
                self.rate = rate
                return rate
            except (OSError, IOError, ValueError) as exc:
                errors.append(f"{rate} Hz: {exc}")
        self.close()
        raise DeviceError(f"cannot open {self.name} for mono PCM16 capture ({'; '.join(errors)}); {NO_MIC_HINT}")

    def _callback(self, in_data: bytes, frame_count: int, time_info: Any, status: int):
        import pyaudio

        if self._emit is not None and in_data:
            self._emit(np.frombuffer(in_data, dtype=np.int16).copy())
        return None, pyaudio.paContinue

    def start(self, emit: Callable[[np.ndarray], None]) -> None:
        """Start capturing; emit(int16 samples) is called from PyAudio's thread every frame_ms."""
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


class CameraSource:
    """The webcam through OpenCV, sampled at about `fps` frames per second by a reader thread."""

    def __init__(self, index: int = 0, fps: float = 10.0) -> None:
        self.index, self.fps = index, fps
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
            raise DeviceError(f"no camera: OpenCV could not open {self.name}; {NO_CAMERA_HINT}")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self.close()
            raise DeviceError(f"{self.name} opened but returned no frame (in use by another program?); {NO_CAMERA_HINT}")
        return frame.shape[1], frame.shape[0]

    def start(self, emit: Callable[[float, np.ndarray], None], t0: float) -> None:
        """Start the reader thread; emit(seconds since t0, frame) for about fps frames a second."""
        self._thread = threading.Thread(target=self._run, args=(emit, t0), name="camera", daemon=True)
        self._thread.start()

    def _run(self, emit: Callable[[float, np.ndarray], None], t0: float) -> None:
        period, next_t = 1.0 / self.fps, time.monotonic()
        while not self._stop.is_set():
            ok, frame = self._cap.read()  # reading every frame keeps the driver's buffer fresh
            if not ok:
                log.error("%s stopped delivering frames", self.name)
                return
            now = time.monotonic()
            if now >= next_t:
                emit(now - t0, frame)
                next_t = max(next_t + period, now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_media(path: Path) -> tuple[bool, bool]:
    """(has_audio, has_video) of a media file; DeviceError when it is missing or unreadable."""
    import av

    if not path.is_file():
        raise DeviceError(f"media file not found: {path}")
    try:
        with av.open(str(path)) as container:
            has = bool(container.streams.audio), bool(container.streams.video)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DeviceError(f"cannot open media file {path} with PyAV/FFmpeg: {exc}") from None
    if not any(has):
        raise DeviceError(f"media file {path} has neither an audio nor a video stream")
    return has


def iter_media(path: Path, fps: float = 10.0, video: bool = True, chunk_ms: int = 20) -> Iterator[MediaItem]:
    """Audio (16 kHz mono int16, chunk_ms pieces) and video frames (about fps) of a file, in media-time order."""
    import av

    with av.open(str(path)) as container:
        streams = [s for s in (container.streams.audio[:1] + (container.streams.video[:1] if video else []))]
        audio = next((s for s in streams if s.type == "audio"), None)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=NATIVE_SAMPLE_RATE) if audio else None
        chunk = NATIVE_SAMPLE_RATE * chunk_ms // 1000
        pending, sent = np.zeros(0, np.int16), 0
        next_video = 0.0
        for packet in container.demux(*streams):
            for frame in packet.decode():
                if packet.stream.type == "audio":
                    for out in resampler.resample(frame):
                        pending = np.concatenate([pending, out.to_ndarray().reshape(-1).astype(np.int16)])
                    while len(pending) >= chunk:
                        yield AudioItem(sent / NATIVE_SAMPLE_RATE, pending[:chunk])
                        pending, sent = pending[chunk:], sent + chunk
                else:
                    t = max(0.0, float(frame.time or 0.0))
                    if t + 1e-6 >= next_video:
                        next_video = max(next_video + 1.0 / fps, t)
                        yield VideoItem(t, frame.to_ndarray(format="bgr24"))
        if resampler is not None:
            for out in resampler.resample(None):
                pending = np.concatenate([pending, out.to_ndarray().reshape(-1).astype(np.int16)])
            if len(pending):
                yield AudioItem(sent / NATIVE_SAMPLE_RATE, pending)
