"""What a subscriber holds: replayed items first, then live events, in seq order per session.

Kept apart from the bus so that the reading side (queues, gaps, drops, tenant
visibility) can be read without the bus's bookkeeping of sessions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from magtkd_stream.wire.events import control, dumps
from magtkd_stream.wire.protocol import ProtocolError

if TYPE_CHECKING:
    from magtkd_stream.wire.bus import EventBus

ALL = "*"


def visible(reader: Optional[str], owner: Optional[str]) -> bool:
    """May a subscriber of tenant `reader` read a session of tenant `owner`? None: every tenant / no tenant."""
    return reader is None or owner is None or reader == owner


@dataclass(frozen=True)
class BusEvent:
    """One published event; `text` is its JSON, encoded once and shared by every subscriber."""

    session: str
    seq: int
    data: dict[str, Any]
    text: str
    order: int = 0  # the bus's publication count when it went out: the order across sessions


@dataclass(frozen=True)
class GapNotice:
    """Events from_seq..to_seq of a session were asked for but are no longer in the replay buffer."""

    session: str
    from_seq: int
    to_seq: int
    reason: str

    @property
    def data(self) -> dict[str, Any]:
        return control("gap", session=self.session, from_seq=self.from_seq, to_seq=self.to_seq, reason=self.reason)

    @property
    def text(self) -> str:
        return dumps(self.data)


BusItem = Union[BusEvent, GapNotice]


class SubscriptionDropped(Exception):
    """The subscriber fell too far behind; `reason` says why (sent to the client before closing)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """What one subscriber receives: replayed items first, then live events, each session in seq order."""

    def __init__(
        self, bus: "EventBus", session: str, maxsize: int, replay: list[BusItem], tenant: Optional[str] = None,
        conversation: Optional[str] = None,
    ) -> None:
        self.bus = bus
        self.session = session  # a session id, ALL, or "" for a conversation's subscriber
        self.conversation = conversation  # every session that joins it
        self.tenant = tenant  # None: reads every tenant's sessions
        self.refusal: Optional[ProtocolError] = None  # set when the bus refused it rather than dropped it
        self._replay: deque[BusItem] = deque(replay)
        self._queue: asyncio.Queue[BusEvent] = asyncio.Queue(maxsize)
        self._last: dict[str, int] = {}
        self._dropped = asyncio.Event()
        self.dropped_reason: Optional[str] = None
        self.closed = False

    def _offer(self, event: BusEvent) -> bool:
        """Queue a live event without waiting; False when the queue is full (the bus then drops us)."""
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            return False

    def _drop(self, reason: str, refusal: Optional[ProtocolError] = None) -> None:
        self.refusal = refusal
        self.dropped_reason = reason
        self.closed = True
        self._dropped.set()

    @property
    def pending(self) -> int:
        """Items waiting to be delivered (replay plus live queue)."""
        return len(self._replay) + self._queue.qsize()

    def _fresh(self, item: BusItem) -> bool:
        if isinstance(item, GapNotice):
            return True
        if item.seq == 1:  # a session_start: the id may be reused after the bus forgot an old session
            self._last.pop(item.session, None)
        if item.seq <= self._last.get(item.session, 0):
            return False  # already delivered; cannot happen by construction, guarded anyway
        self._last[item.session] = item.seq
        return True

    def get_nowait(self) -> Optional[BusItem]:
        """The next item if one is ready, else None."""
        if self.dropped_reason is not None:
            raise SubscriptionDropped(self.dropped_reason)
        while self._replay:
            item = self._replay.popleft()
            if self._fresh(item):
                return item
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if self._fresh(item):
                return item
        return None

    async def get(self) -> BusItem:
        """Wait for the next item; raises SubscriptionDropped once the subscriber has been dropped."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            getter = asyncio.ensure_future(self._queue.get())
            dropped = asyncio.ensure_future(self._dropped.wait())
            try:
                done, _ = await asyncio.wait({getter, dropped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                dropped.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                event = getter.result()
                if self.dropped_reason is None and self._fresh(event):
                    return event
            if self.dropped_reason is not None:
                raise SubscriptionDropped(self.dropped_reason)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> BusItem:
        return await self.get()

    async def wait_dropped(self) -> str:
        """Return the reason once the bus drops this subscriber."""
        await self._dropped.wait()
        return self.dropped_reason or "dropped"

    def close(self) -> None:
        """Leave the bus (the subscriber disconnected)."""
        self.bus.unsubscribe(self)
