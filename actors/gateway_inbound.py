"""Per-session inbound plumbing of the gateway: the bounded queue, the video rate limiter, JPEG decoding.

The queue sits between a publisher's websocket reader and the pipeline sink so
that a slow pipeline never stalls the reader of another session. When it is
full, video frames are shed (the oldest queued one first: it is the stalest)
and audio waits, which pushes back on that one publisher's TCP connection only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from magtkd_stream.wire.protocol import ProtocolError, jpeg_dimensions


@dataclass(frozen=True)
class Inbound:
    kind: str  # "audio", "video" or "end"
    samples: Optional[np.ndarray] = None  # audio: float32 at 16 kHz
    wall: float = 0.0  # audio: wall-clock time the samples arrived (latency is measured from it)
    ts: float = 0.0  # video: media seconds
    frame: Optional[np.ndarray] = None  # video: BGR uint8 (H, W, 3)


END = Inbound("end")


class InboundQueue:
    """Bounded FIFO that never drops audio: video is shed when full, audio (and end) waits for room."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"inbound queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[Inbound] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.closed = False
        self.shed = 0  # video frames discarded for lack of room

    def __len__(self) -> int:
        return len(self._items)

    def _evict_video(self) -> bool:
        for i, item in enumerate(self._items):
            if item.kind == "video":
                del self._items[i]
                self.shed += 1
                return True
        return False

    def _append(self, item: Inbound) -> None:
        self._items.append(item)
        self._not_empty.set()
        if len(self._items) >= self.maxsize:
            self._not_full.clear()

    def put_video(self, item: Inbound) -> bool:
        """Queue a frame without waiting; False when it was shed."""
        if self.closed:
            return False
        if len(self._items) >= self.maxsize and not self._evict_video():
            self.shed += 1
            return False
        self._append(item)
        return True

    async def put(self, item: Inbound) -> bool:
        """Queue audio or end, waiting for room (after shedding queued video); False once closed."""
        while not self.closed and len(self._items) >= self.maxsize:
            if self._evict_video():
                continue
            self._not_full.clear()
            await self._not_full.wait()
        if self.closed:
            return False
        self._append(item)
        return True

    async def get(self) -> Inbound:
        while not self._items:
            if self.closed:
                return END
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        if len(self._items) < self.maxsize:
            self._not_full.set()
        return item

    def close(self) -> None:
        """Wake every waiter; later puts are refused (the consumer is gone)."""
        self.closed = True
        self._not_empty.set()
        self._not_full.set()


class RateLimiter:
    """Token bucket: `rate` events per second with bursts up to one second's worth (or `burst`)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, burst: Optional[float] = None) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate if burst is None else float(burst))
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def full(self) -> bool:
        """True once the bucket has refilled completely (nothing to remember about this client)."""
        return self._tokens + (self._clock() - self._last) * self.rate >= self.capacity


class Throttle:
    """At most one notice per `interval` seconds per key (non-fatal errors a client keeps triggering)."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = self._clock()
        if now - self._last.get(key, -1e18) >= self.interval:
            self._last[key] = now
            return True
        return False


def check_jpeg_header(jpeg: bytes, max_pixels: int) -> None:
    """Refuse data that is not a JPEG, or whose declared size would be unreasonable to decode."""
    size = jpeg_dimensions(jpeg)
    if size is None:
        raise ProtocolError(
            "bad_jpeg", f"video frame payload ({len(jpeg)} bytes) is not a JPEG image (no SOI/SOF header)", fatal=False
        )
    w, h = size
    if w * h > max_pixels:
        raise ProtocolError(
            "bad_jpeg", f"JPEG of {w}x{h} pixels exceeds the limit of {max_pixels} pixels per frame", fatal=False
        )


def decode_jpeg(jpeg: bytes) -> Any:
    """JPEG bytes -> BGR uint8 (H, W, 3), or None when OpenCV cannot decode them."""
    import cv2

    img = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        return None
    return img
