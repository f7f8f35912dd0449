"""Per-session event bus: sequence numbers, a bounded replay buffer, and bounded subscriber queues.

Every event of a session gets the next seq (1, 2, 3, ...) and is kept in a
replay buffer of the last N events, so a subscriber that reconnects with the
last seq it saw receives exactly what it missed, or an explicit gap notice when
the buffer no longer holds it. publish() never blocks: a subscriber whose queue
is full is dropped with a reason instead of slowing the pipeline or anyone else.

All methods run on one asyncio event loop thread; subscribe() is synchronous,
so taking the replay snapshot and joining the live stream happen with no event
published in between: no duplicates and no reordering across the boundary.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from magtkd_stream.wire.events import dumps, validate_event
from magtkd_stream.wire.protocol import ProtocolError
from magtkd_stream.wire.subscription import (
    ALL,
    BusEvent,
    BusItem,
    GapNotice,
    Subscription,
    SubscriptionDropped,
    visible,
)

log = logging.getLogger(__name__)

__all__ = ["ALL", "BusEvent", "BusItem", "EventBus", "GapNotice", "Subscription", "SubscriptionDropped", "visible"]


@dataclass
class _SessionLog:
    state: str = "pending"  # pending (only subscribers waiting) -> live -> ended
    seq: int = 0
    buffer: deque = field(default_factory=deque)
    subscribers: set = field(default_factory=set)
    ended_at: float = 0.0
    tenant: Optional[str] = None  # who started it; None: no tenant (visible to all, e.g. the server's own mic)
    conversation: Optional[str] = None  # the conversation the session joined (its session_start says so)

    @property
    def first_seq(self) -> int:
        return self.buffer[0].seq if self.buffer else self.seq + 1


class EventBus:
    """Sequencing, replay and fan-out of events for every session of one server.

    replay_buffer: events kept per session for resume. subscriber_queue: live events a subscriber
    may have waiting before it is dropped. ended_sessions_kept / ended_session_ttl_s: how many
    ended sessions (and for how long) stay available for late resumes.
    """

    def __init__(
        self,
        replay_buffer: int = 1024,
        subscriber_queue: int = 256,
        ended_sessions_kept: int = 256,
        ended_session_ttl_s: float = 600.0,
        validate: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if replay_buffer < 1 or subscriber_queue < 1:
            raise ValueError(
                f"replay_buffer and subscriber_queue must be >= 1, got {replay_buffer}, {subscriber_queue}"
            )
        if ended_sessions_kept < 0 or ended_session_ttl_s < 0:
            raise ValueError("ended_sessions_kept and ended_session_ttl_s must be >= 0")
        self.replay_buffer = replay_buffer
        self.subscriber_queue = subscriber_queue
        self.ended_sessions_kept = ended_sessions_kept
        self.ended_session_ttl_s = ended_session_ttl_s
        self.validate = validate
        self._clock = clock
        self._logs: dict[str, _SessionLog] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()  # ended sessions, oldest first
        self._all: set[Subscription] = set()
        self._conv: dict[str, set[Subscription]] = {}  # subscribers of each conversation
        self._published = 0  # events published so far, every session
        self.dropped_count = 0
        self.observers: list[Callable[[BusEvent], None]] = []  # told of every published event (metrics)

    # ------------------------------------------------------------ sessions

    def state(self, session: str) -> Optional[str]:
        """ "live", "ended", or None for a session the bus does not know (or only has waiting subscribers for)."""
        self._expire()
        log_ = self._logs.get(session)
        return None if log_ is None or log_.state == "pending" else log_.state

    def sessions(self, tenant: Optional[str] = None) -> dict[str, dict[str, Any]]:
        """Known sessions (of `tenant` only, unless None) with their state and the seq range still replayable."""
        self._expire()
        return {
            name: {"state": lg.state, "first_seq": lg.first_seq, "last_seq": lg.seq}
            for name, lg in self._logs.items()
            if lg.state != "pending" and visible(tenant, lg.tenant)
        }

    def tenant_of(self, session: str) -> Optional[str]:
        lg = self._logs.get(session)
        return None if lg is None else lg.tenant

    def check_new_session(self, session: str) -> None:
        """Raise ProtocolError session_taken unless `session` may be started now."""
        self._expire()
        state = self.state(session)
        if state == "live":
            raise ProtocolError("session_taken", f"session {session!r} already has a live publisher; pick another id")
        if state == "ended":
            raise ProtocolError(
                "session_taken",
                f"session {session!r} already ran and ended; session ids are single-use, pick a new one",
            )

    def start_session(self, session: str, event: Mapping[str, Any], tenant: Optional[str] = None) -> int:
        """Mark a session live (owned by `tenant`) and publish its session_start event (seq 1).

        Session ids are single-use while remembered: a live or ended id raises session_taken.
        Subscribers of another tenant that were waiting for this id are refused with forbidden.
        """
        self.check_new_session(session)
        lg = self._logs.get(session)
        if event.get("type") != "session_start":
            raise ValueError(f"start_session needs a session_start event, got {event.get('type')!r}")
        if lg is None:
            lg = self._logs[session] = _SessionLog()
        lg.state = "live"
        lg.tenant = tenant
        lg.conversation = event.get("conversation")
        lg.buffer = deque(maxlen=self.replay_buffer)
        for sub in [s for s in lg.subscribers if not visible(s.tenant, tenant)]:
            reason = f"session {session!r} was opened by another tenant; this token reads only its own tenant's sessions"
            self._drop(sub, reason, ProtocolError("forbidden", reason))
        for sub in [s for s in self._conv.get(lg.conversation or "", ()) if not visible(s.tenant, tenant)]:
            reason = (f"conversation {lg.conversation!r} was joined by another tenant; this token reads only its own "
                      "tenant's sessions")
            self._drop(sub, reason, ProtocolError("forbidden", reason))
        return self._publish(session, lg, event)

    def end_session(self, session: str, event: Mapping[str, Any]) -> int:
        """Publish the session_end event and mark the session ended (kept for late resumes)."""
        lg = self._live(session)
        if event.get("type") != "session_end":
            raise ValueError(f"end_session needs a session_end event, got {event.get('type')!r}")
        seq = self._publish(session, lg, event)
        lg.state = "ended"
        lg.ended_at = self._clock()
        self._ended[session] = None
        self._expire()
        return seq

    def publish(self, session: str, event: Mapping[str, Any]) -> int:
        """Assign the next seq, keep the event for replay, fan it out; never blocks. Returns the seq.

        Raises ValueError for an event of another session, a session that is not live, or (with
        validate=True) an event that breaks its schema, naming the field.
        """
        kind = event.get("type")
        if kind in ("session_start", "session_end"):
            raise ValueError(f"{kind} is published by start_session/end_session, not publish()")
        return self._publish(session, self._live(session), event)

    def _live(self, session: str) -> _SessionLog:
        lg = self._logs.get(session)
        if lg is None or lg.state != "live":
            state = "unknown" if lg is None or lg.state == "pending" else lg.state
            raise ValueError(f"cannot publish to session {session!r}: it is {state}, not live")
        return lg

    def _publish(self, session: str, lg: _SessionLog, event: Mapping[str, Any]) -> int:
        if event.get("session") != session:
            raise ValueError(f"event for session {event.get('session')!r} published to session {session!r}")
        data = {"type": event.get("type"), "version": event.get("version"), "session": session, "seq": lg.seq + 1}
        data.update((k, v) for k, v in event.items() if k not in data)
        if self.validate:
            validate_event(data)
        lg.seq += 1
        self._published += 1
        item = BusEvent(session, lg.seq, data, dumps(data), self._published)
        lg.buffer.append(item)
        conv = self._conv.get(lg.conversation, ()) if lg.conversation else ()
        for sub in list(lg.subscribers) + [s for s in (*self._all, *conv) if visible(s.tenant, lg.tenant)]:
            if not sub._offer(item):
                self._drop(
                    sub,
                    f"subscriber queue full ({self.subscriber_queue} events waiting): the client reads too slowly; "
                    "reconnect with resume to catch up from the replay buffer",
                )
        for observe in self.observers:
            try:
                observe(item)
            except Exception:  # an observer's bug must not cost the event
                log.exception("event observer failed on %s seq %d", session, lg.seq)
        return lg.seq

    def _expire(self) -> None:
        now = self._clock()
        while self._ended:
            name = next(iter(self._ended))
            lg = self._logs.get(name)
            too_many = len(self._ended) > self.ended_sessions_kept
            too_old = lg is None or now - lg.ended_at > self.ended_session_ttl_s
            if not (too_many or too_old):
                break
            del self._ended[name]
            if lg is not None:
                log.debug("forgetting ended session %s (seq %d)", name, lg.seq)
                # Subscribers still attached keep their queues; the log itself goes.
                for sub in list(lg.subscribers):
                    lg.subscribers.discard(sub)
                del self._logs[name]

    # ------------------------------------------------------------ subscribers

    def conversation_sessions(self, conversation: str) -> list[str]:
        """Known sessions (live or ended, not yet forgotten) that joined `conversation`, oldest first."""
        self._expire()
        return [n for n, lg in self._logs.items() if lg.state != "pending" and lg.conversation == conversation]

    def subscribe(
        self, session: str, resume: Optional[Mapping[str, int]] = None, tenant: Optional[str] = None,
        conversation: Optional[str] = None,
    ) -> Subscription:
        """Subscribe to one session (live, ended, or not yet started), to ALL ("*"), or to a conversation.

        A conversation's subscriber (session "", conversation NAME) receives every session that
        joined or joins it; like "*", resume replays the named sessions after their last_seq and the
        conversation's other known sessions from their start; a session of another tenant in it
        raises ProtocolError forbidden.

        resume None: live events from now on. resume {session: last_seq}: events after last_seq
        first (a GapNotice where the buffer no longer has them), then live. With "*", known
        sessions missing from resume replay from their start. Resuming an unknown session raises
        ProtocolError unknown_session; a last_seq beyond the newest event raises bad_message.
        tenant (None: all): only sessions of that tenant are delivered; naming another tenant's known
        session, or resuming it, raises ProtocolError forbidden.
        """
        self._expire()
        if conversation is not None:
            return self._subscribe_conversation(conversation, resume, tenant)
        replay: list[BusItem] = []
        for name in {session, *(resume or {})} - {ALL}:
            lg = self._logs.get(name)
            if lg is not None and lg.state != "pending" and not visible(tenant, lg.tenant):
                raise ProtocolError(
                    "forbidden",
                    f"session {name!r} belongs to another tenant; this token reads only its own tenant's sessions",
                )
        if resume is not None:
            self._check_resume(resume)
            if session == ALL:
                names = [n for n, lg in self._logs.items() if lg.state != "pending" and visible(tenant, lg.tenant)]
            else:
                names = [session] if session in resume else []
            for name in names:
                replay.extend(self._replay_items(name, resume.get(name, 0)))
        sub = Subscription(self, session, self.subscriber_queue, replay, tenant)
        if session == ALL:
            self._all.add(sub)
        else:
            self._logs.setdefault(session, _SessionLog()).subscribers.add(sub)
        return sub

    def _subscribe_conversation(self, conversation: str, resume: Optional[Mapping[str, int]],
                                tenant: Optional[str]) -> Subscription:
        members = self.conversation_sessions(conversation)
        for name in members:
            if not visible(tenant, self._logs[name].tenant):
                raise ProtocolError("forbidden", f"conversation {conversation!r} belongs to another tenant; this "
                                                 "token reads only its own tenant's sessions")
        replay: list[BusItem] = []
        if resume is not None:
            strangers = sorted(set(resume) - set(members))
            if strangers:
                raise ProtocolError("bad_message", f"resume names sessions {strangers} that are not known "
                                                   f"participants of conversation {conversation!r}")
            self._check_resume(resume)
            for name in members:
                replay.extend(self._replay_items(name, resume.get(name, 0)))
            # gaps first, then the participants' events interleaved as they were published
            replay.sort(key=lambda item: item.order if isinstance(item, BusEvent) else 0)
        sub = Subscription(self, "", self.subscriber_queue, replay, tenant, conversation)
        self._conv.setdefault(conversation, set()).add(sub)
        return sub

    def _check_resume(self, resume: Mapping[str, int]) -> None:
        """Raise ProtocolError unless every session of `resume` is known and its last_seq not ahead of it."""
        for name, last in resume.items():
            lg = self._logs.get(name)
            if lg is None or lg.state == "pending":
                raise ProtocolError(
                    "unknown_session",
                    f"cannot resume session {name!r}: this server does not know it (it never ran here, or it "
                    f"ended more than {self.ended_session_ttl_s:g} s / {self.ended_sessions_kept} sessions ago)",
                )
            if last > lg.seq:
                raise ProtocolError(
                    "bad_message",
                    f"resume: last_seq {last} for session {name!r} is ahead of its newest event {lg.seq}",
                )

    def _replay_items(self, session: str, last: int) -> list[BusItem]:
        lg = self._logs[session]
        items: list[BusItem] = []
        first = lg.first_seq
        if last + 1 < first:
            items.append(
                GapNotice(
                    session,
                    last + 1,
                    first - 1,
                    f"the replay buffer keeps the last {self.replay_buffer} events per session; "
                    f"events {last + 1}..{first - 1} are gone",
                )
            )
        items.extend(e for e in lg.buffer if e.seq > last)
        return items

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        self._all.discard(sub)
        if sub.conversation is not None:
            subs = self._conv.get(sub.conversation)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._conv[sub.conversation]
        elif sub.session != ALL:
            lg = self._logs.get(sub.session)
            if lg is not None:
                lg.subscribers.discard(sub)
                if lg.state == "pending" and not lg.subscribers:
                    del self._logs[sub.session]

    def _drop(self, sub: Subscription, reason: str, refusal: Optional[ProtocolError] = None) -> None:
        if sub.dropped_reason is not None:
            return
        if refusal is None:
            log.warning("dropping subscriber of %s: %s", sub.session, reason)
            self.dropped_count += 1
        sub._drop(reason, refusal)
        self.unsubscribe(sub)

    def subscriber_count(self) -> int:
        return (len(self._all) + sum(len(s) for s in self._conv.values())
                + sum(len(lg.subscribers) for lg in self._logs.values()))
