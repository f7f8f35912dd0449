"""Decoding a media file into what a live client would send: 16 kHz mono audio chunks and timed BGR frames.

PyAV demuxes the file once, in file order; audio is resampled to 16 kHz mono
float32 and cut into short chunks, video frames are converted to BGR (scaled
down to a bounded size, at most `max_fps` per second). Because muxers
interleave streams only roughly, items pass through a small reorder buffer
and come out in media-time order, as they would arrive from a live client.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from magtkd_stream.media.files import ACCEPTED, MediaError, open_container, probe
from magtkd_stream.names import SAMPLE_RATE


@dataclass
class AudioChunk:
    end_s: float  # media time of the chunk's last sample (when a live client would have sent it)
    samples: np.ndarray  # float32 mono 16 kHz


@dataclass
class Frame:
    ts: float  # media time, seconds from the start of the file
    image: np.ndarray  # uint8 BGR (H, W, 3)


MediaItem = Union[AudioChunk, Frame]


def _scaled_bgr(frame: Any, max_side: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0:
        return frame.to_ndarray(format="bgr24", width=max(2, round(w * scale)), height=max(2, round(h * scale)))
    return frame.to_ndarray(format="bgr24")


def decode(
    path: Union[str, Path],
    chunk_ms: int = 20,
    video: bool = True,
    max_fps: float = 10.0,
    max_side: int = 640,
    reorder_s: float = 1.0,
) -> Iterator[MediaItem]:
    """Audio chunks and frames in media-time order. Media time 0 is the container's start."""
    import av

    info = probe(path, need_audio=True)
    container = open_container(info.path)
    try:
        a_stream = container.streams.audio[0]
        v_stream = container.streams.video[0] if (video and container.streams.video) else None
        if v_stream is not None:
            v_stream.thread_type = "AUTO"
        streams = [a_stream] + ([v_stream] if v_stream is not None else [])
        start = float(container.start_time) / 1e6 if container.start_time is not None else 0.0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunk = SAMPLE_RATE * chunk_ms // 1000
        pending = np.zeros(0, dtype=np.float32)
        emitted = 0  # audio samples handed out so far
        started = False
        min_gap = 1.0 / max_fps if max_fps > 0 else 0.0
        last_frame = -1e9
        heap: list[tuple[float, int, MediaItem]] = []
        order = itertools.count()

        def audio_items(samples: np.ndarray, final: bool = False) -> list[MediaItem]:
            nonlocal pending, emitted
            pending = np.concatenate([pending, samples]) if pending.size else samples
            out: list[MediaItem] = []
            while pending.size >= chunk or (final and pending.size):
                part, pending = pending[:chunk], pending[chunk:]
                emitted += part.size
                out.append(AudioChunk(emitted / SAMPLE_RATE, np.clip(part, -1.0, 1.0).astype(np.float32)))
            return out

        def frames_of(packet: Any) -> list[MediaItem]:
            nonlocal started, last_frame
            out: list[MediaItem] = []
            for frame in packet.decode():
                if packet.stream.type == "audio":
                    if not started and frame.time is not None and frame.time - start > 0:
                        # audio starts late: pad with silence so media times line up with the video
                        out += audio_items(np.zeros(int(round((frame.time - start) * SAMPLE_RATE)), np.float32))
                    started = True
                    for res in resampler.resample(frame):
                        out += audio_items(res.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                elif frame.time is not None:
                    ts = max(0.0, frame.time - start)
                    if ts - last_frame >= min_gap:
                        last_frame = ts
                        out.append(Frame(ts, _scaled_bgr(frame, max_side)))
            return out

        def when(item: MediaItem) -> float:
            return item.end_s if isinstance(item, AudioChunk) else item.ts

        try:
            for packet in container.demux(*streams):
                for item in frames_of(packet):
                    heapq.heappush(heap, (when(item), next(order), item))
                    while heap and heap[0][0] < when(item) - reorder_s:
                        yield heapq.heappop(heap)[2]
        except av.error.FFmpegError as exc:
            raise MediaError(f"{info.path}: decoding failed ({exc}); expected {ACCEPTED}") from None
        for res in resampler.resample(None):
            for item in audio_items(res.to_ndarray().reshape(-1).astype(np.float32, copy=False)):
                heapq.heappush(heap, (when(item), next(order), item))
        for item in audio_items(np.zeros(0, np.float32), final=True):
            heapq.heappush(heap, (when(item), next(order), item))
        while heap:
            yield heapq.heappop(heap)[2]
        if not started:
            raise MediaError(f"{info.path}: the audio stream holds no decodable samples; expected {ACCEPTED}")
    finally:
        container.close()
