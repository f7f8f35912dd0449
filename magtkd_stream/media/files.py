"""Media files with PyAV: one header probe, 16 kHz mono audio and uniformly sampled frames of a time span.

The one place media files are opened, for the service, training and the demo
alike. Loaders probe every clip once (header only) so that a corrupt or
missing file is found and counted at load time rather than crashing an epoch
later; decoding happens only when an encoder needs the samples. Frames are
sampled by time, so only the chosen frames become arrays and a long clip
costs no memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.resources import require

ACCEPTED = "an audio or video file FFmpeg can read (wav, mp3, flac, ogg, m4a, mp4, mkv, webm, ...) with an audio track"


class MediaError(ValueError):
    """A media file is unreadable, or has no stream of the kind asked for; the message names the file and why."""


class MediaNotFound(MediaError, FileNotFoundError):
    """The media file does not exist."""


@dataclass(frozen=True)
class MediaSpan:
    """A time span of a media file; end None means 'to the end of the file'."""

    path: str
    start: float = 0.0  # seconds within the file
    end: float | None = None

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ValueError(f"MediaSpan start must be >= 0, got {self.start} for {self.path}")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"MediaSpan end ({self.end}) must be after start ({self.start}) for {self.path}")


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration: Optional[float]  # seconds; None when the container does not say
    has_audio: bool
    has_video: bool
    audio_rate: int  # Hz of the first audio stream; 0 without one
    video_fps: Optional[float]


def _av():
    return require("av", "av", why="decoding audio/video clips")


def open_container(path: Union[str, Path]):
    """The file opened by PyAV; MediaNotFound / MediaError name the file and what is accepted."""
    av = _av()
    p = Path(path)
    if not p.is_file():
        raise MediaNotFound(f"{p}: media file not found (no such file); expected {ACCEPTED}")
    try:
        return av.open(str(p))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{p}: cannot open it, FFmpeg cannot decode it ({exc}); expected {ACCEPTED}") from None


def probe(path: Union[str, Path], *, need_audio: bool = False) -> MediaInfo:
    """Read only the container header: duration and which streams exist.

    need_audio: refuse a file without an audio track (the recognizer needs speech).
    """
    with open_container(path) as container:
        if need_audio and not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise MediaError(f"{path}: has no audio stream (found {', '.join(kinds)}); the recognizer needs speech audio")
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        return MediaInfo(
            path=str(path),
            duration=container.duration / 1_000_000 if container.duration else None,
            has_audio=audio is not None,
            has_video=video is not None,
            audio_rate=int(audio.rate or 0) if audio is not None else 0,
            video_fps=float(video.average_rate) if video is not None and video.average_rate else None,
        )


def load_audio(span: MediaSpan, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the span's audio as float32 mono in [-1, 1] at `sr` Hz.

    Raises MediaError for a missing/unreadable file or one without audio.
    """
    av = _av()
    start, end = span.start, span.end
    chunks: list[np.ndarray] = []
    t0: float | None = None
    with open_container(span.path) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {span.path}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        if start > 1.0:
            container.seek(int(start * 1_000_000), any_frame=False, backward=True)
        try:
            for frame in container.decode(stream):
                if t0 is None:
                    t0 = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                if end is not None and frame.pts is not None and float(frame.pts * frame.time_base) >= end:
                    break
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode audio of {span.path}: {exc}") from exc
    if not chunks:
        raise MediaError(f"no audio samples decoded from {span.path}")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    first = max(0, int(round((start - (t0 or 0.0)) * sr)))
    last = len(audio) if end is None else max(first, int(round((end - (t0 or 0.0)) * sr)))
    if last <= first or first >= len(audio):
        raise MediaError(f"no audio in [{start}, {end}] s of {span.path}: the span lies past its end")
    return np.ascontiguousarray(audio[first:last])


def _frame_time(frame, stream) -> float | None:
    if frame.pts is None:
        return None
    return float(frame.pts * (frame.time_base or stream.time_base))


def _span_end(container, stream, span: MediaSpan) -> float:
    """End time of the span, from the span, the stream, the container, or a decode pass."""
    if span.end is not None:
        return span.end
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base) + float(stream.start_time or 0) * float(stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    last = span.start
    for frame in container.decode(stream):
        t = _frame_time(frame, stream)
        if t is not None:
            last = max(last, t)
    container.seek(0)
    return last + 1e-3


def load_frames(
    span: MediaSpan, num_frames: int | None = None, fps: float | None = None
) -> list[np.ndarray]:
    """Frames sampled uniformly across the span, each H x W x 3 uint8 BGR.

    Give exactly one of `num_frames` (evenly spaced over the span; a short clip
    repeats frames, so the count is always met) or `fps` (one frame every 1/fps
    seconds). Raises MediaError for a missing/unreadable file or one without video.
    """
    if (num_frames is None) == (fps is None):
        raise ValueError("load_frames: give exactly one of num_frames or fps")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    av = _av()
    with open_container(span.path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {span.path}")
        stream = container.streams.video[0]
        try:
            end = _span_end(container, stream, span)
            length = max(end - span.start, 1e-3)
            if num_frames is not None:
                targets = [span.start + (i + 0.5) * length / num_frames for i in range(num_frames)]
            else:
                count = max(1, int(math.floor(length * float(fps))))
                targets = [span.start + i / float(fps) for i in range(count)]
            if span.start > 1.0:
                container.seek(int(span.start * 1_000_000), any_frame=False, backward=True)
            frames = _pick_frames(container.decode(stream), stream, targets)
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode video of {span.path}: {exc}") from exc
    if not frames:
        raise MediaError(f"no video frames decoded from {span.path} in [{span.start}, {span.end}]")
    return frames


def _pick_frames(decoded, stream, targets: list[float]) -> list[np.ndarray]:
    """For each target time, the frame on screen then (the last one at or before it).

    Only frames that are picked are converted to arrays; a frame picked for
    several targets (a clip shorter than the request) is converted once and
    copied, so that callers may edit frames in place.
    """
    out: list[np.ndarray] = []
    prev = None
    prev_t = -math.inf
    cache: tuple[object, np.ndarray] | None = None

    def as_array(frame) -> np.ndarray:
        nonlocal cache
        if cache is None or cache[0] is not frame:
            cache = (frame, frame.to_ndarray(format="bgr24"))
            return cache[1]
        return cache[1].copy()

    i = 0
    for frame in decoded:
        t = _frame_time(frame, stream)
        t = prev_t + 1e-6 if t is None else t
        while i < len(targets) and t > targets[i]:
            out.append(as_array(prev if prev is not None else frame))
            i += 1
        if i >= len(targets):
            break
        prev, prev_t = frame, t
    while i < len(targets) and prev is not None:
        out.append(as_array(prev))
        i += 1
    return out
