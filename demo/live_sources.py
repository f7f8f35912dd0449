"""Where the live client's media come from: the microphone, the webcam or a media file.

The devices are magtkd_stream.devices' Microphone and Camera (the same ones
`serve --mic/--camera` reads); this module only says what a client user should
do instead when one is missing. A media file is decoded by magtkd_stream.media, the
decoding `magtkd-stream run FILE` replays, so a file sent by the client reaches
the server exactly as it would be replayed locally; the file source is a plain
iterator of timed items, paced by its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from magtkd_stream.media import AudioChunk, decode, probe
from demo.live_messages import to_pcm16
from magtkd_stream.devices import Camera, DeviceError, Microphone
from magtkd_stream.names import SAMPLE_RATE

NO_MIC_HINT = "use --file FILE to publish a media file instead, or run one locally with `magtkd-stream run FILE`"
NO_CAMERA_HINT = "use --no-video to publish the microphone only, --camera N for another camera, or --file FILE"


@dataclass(frozen=True)
class AudioItem:
    t: float  # media seconds of the first sample
    pcm: np.ndarray  # int16 mono at the source's sample rate


@dataclass(frozen=True)
class VideoItem:
    t: float  # media seconds
    frame: np.ndarray  # uint8 BGR (H, W, 3)


MediaItem = Union[AudioItem, VideoItem]


def microphone(device: int | None = None, frame_ms: int = 20) -> Microphone:
    """The microphone as the client publishes it: int16 at the device's rate, declared in the hello."""
    return Microphone(device, frame_ms, hint=NO_MIC_HINT)


def camera(index: int = 0, fps: float = 10.0) -> Camera:
    """The webcam, sampled at about fps frames a second."""
    return Camera(index, fps, hint=NO_CAMERA_HINT)


def open_media(path: Path) -> tuple[bool, bool]:
    """(has_audio, has_video) of a media file; DeviceError when it is missing, unreadable or has no audio."""
    try:
        info = probe(path, need_audio=True)
    except (FileNotFoundError, ValueError) as exc:
        raise DeviceError(f"media file: {exc}") from None
    return True, info.has_video


def iter_media(path: Path, fps: float = 10.0, video: bool = True, chunk_ms: int = 20) -> Iterator[MediaItem]:
    """Audio (16 kHz mono int16, chunk_ms pieces) and video frames (about fps a second) of a file, in media-time order.

    Frames are thinned here to an average of fps a second (every decoded frame
    from magtkd_stream.media, then the first at or after each 1/fps step), so a 12 fps
    file sent at 5 fps gives 5 frames a second, not every third frame.
    """
    next_video = 0.0
    for item in decode(path, chunk_ms=chunk_ms, video=video, max_fps=0.0):
        if isinstance(item, AudioChunk):
            n = len(item.samples)
            yield AudioItem((round(item.end_s * SAMPLE_RATE) - n) / SAMPLE_RATE, to_pcm16(item.samples))
        elif item.ts + 1e-6 >= next_video:
            next_video = max(next_video + 1.0 / fps, item.ts)
            yield VideoItem(item.ts, item.image)
