"""Conversations the gateway's publishers join: who owns one, who speaks in it, and its clock.

A conversation is a room: it opens with its first participant's accepted
hello and closes when the last one leaves; a later hello under the same name
opens a new one. Its clock starts at that first hello (server wall clock);
every participant's media time 0 lies `offset` seconds later on it, so a
subscriber orders the participants' utterances by offset + start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from magtkd_stream.wire.protocol import ProtocolError
from magtkd_stream.wire.subscription import visible


@dataclass
class _Room:
    tenant: Optional[str]
    opened: float  # wall clock of the first participant's hello
    speakers: dict[str, str] = field(default_factory=dict)  # session -> the participant's speaker name


class Conversations:
    """The live conversations of one gateway; join() raises ProtocolError naming what was refused."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._rooms: dict[str, _Room] = {}
        self._of_session: dict[str, str] = {}

    def join(self, conversation: str, session: str, speaker: str, tenant: Optional[str]) -> float:
        """Add a participant; returns its offset on the conversation's clock (seconds)."""
        now = self.clock()
        room = self._rooms.get(conversation)
        if room is None:
            room = self._rooms[conversation] = _Room(tenant, now)
        elif not (visible(tenant, room.tenant) and visible(room.tenant, tenant)):
            raise ProtocolError("forbidden", f"conversation {conversation!r} belongs to another tenant; pick "
                                             "another conversation id")
        elif speaker in room.speakers.values():
            raise ProtocolError("speaker_taken", f"conversation {conversation!r} already has a live participant "
                                                 f"speaking as {speaker!r}; give this publisher another 'speaker'")
        room.speakers[session] = speaker
        self._of_session[session] = conversation
        return max(0.0, now - room.opened)

    def leave(self, session: str) -> None:
        conversation = self._of_session.pop(session, None)
        room = self._rooms.get(conversation or "")
        if room is None:
            return
        room.speakers.pop(session, None)
        if not room.speakers:
            del self._rooms[conversation or ""]
