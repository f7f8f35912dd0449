"""Event bus: per-session seq, fan-out, replay with resume, gap notices, slow-subscriber drops."""

from __future__ import annotations

import asyncio

import pytest

from magtkd_stream.wire import events as E
from magtkd_stream.wire import protocol as P
from magtkd_stream.wire.bus import ALL, BusEvent, EventBus, GapNotice, SubscriptionDropped


def start(bus: EventBus, session: str) -> int:
    return bus.start_session(session, E.make_session_start(session, None, False, 16000, 0.0))


def end(bus: EventBus, session: str) -> int:
    return bus.end_session(session, E.make_session_end(session, "end", 1.0, 0, 0, 0.0))


def say(bus: EventBus, session: str, i: int) -> int:
    return bus.publish(session, E.make_transcript(session, i, f"utterance {i}", "A", float(i), i + 0.5))


def drain(sub) -> list:
    items = []
    while (item := sub.get_nowait()) is not None:
        items.append(item)
    return items


def seqs(items, session: str | None = None) -> list[int]:
    return [i.seq for i in items if isinstance(i, BusEvent) and (session is None or i.session == session)]


def test_seq_is_per_session_and_every_event_matches_its_schema() -> None:
    bus = EventBus()
    assert start(bus, "a") == 1 and start(bus, "b") == 1
    assert [say(bus, "a", i) for i in range(3)] == [2, 3, 4]
    assert say(bus, "b", 0) == 2
    assert end(bus, "a") == 5
    sub = bus.subscribe("a", {"a": 0})
    for item in drain(sub):
        E.validate_event(item.data)
        assert item.data["seq"] == item.seq and item.text == E.dumps(item.data)


def test_fan_out_to_session_and_star_subscribers_in_order() -> None:
    bus = EventBus()
    sub_a, sub_b, star = bus.subscribe("a"), bus.subscribe("b"), bus.subscribe(ALL)  # before the sessions exist
    start(bus, "a")
    start(bus, "b")
    for i in range(5):
        say(bus, "a", i)
        say(bus, "b", i)
    assert seqs(drain(sub_a)) == list(range(1, 7))
    assert seqs(drain(sub_b)) == list(range(1, 7))
    items = drain(star)
    assert seqs(items, "a") == list(range(1, 7)) and seqs(items, "b") == list(range(1, 7))


def test_resume_replays_missed_events_then_live_without_duplicates() -> None:
    async def scenario() -> list[int]:
        bus = EventBus(replay_buffer=100)
        start(bus, "a")
        for i in range(9):
            say(bus, "a", i)  # seq 2..10
        sub = bus.subscribe("a", {"a": 4})
        got: list[int] = []

        async def producer() -> None:  # keeps publishing while the subscriber is still replaying
            for i in range(9, 30):
                say(bus, "a", i)
                await asyncio.sleep(0)

        task = asyncio.create_task(producer())
        while not got or got[-1] < 31:
            item = await asyncio.wait_for(sub.get(), 2)
            got.append(item.seq)
            if len(got) % 3 == 0:
                await asyncio.sleep(0)  # a consumer slower than the producer for a while
        await task
        return got

    assert asyncio.run(scenario()) == list(range(5, 32))


def test_resume_older_than_the_buffer_gets_an_explicit_gap_first() -> None:
    bus = EventBus(replay_buffer=5)
    start(bus, "a")
    for i in range(11):
        say(bus, "a", i)  # seq 2..12; the buffer holds 8..12
    items = drain(bus.subscribe("a", {"a": 2}))
    gap = items[0]
    assert isinstance(gap, GapNotice) and (gap.from_seq, gap.to_seq) == (3, 7)
    E.validate_event(gap.data)
    assert "5 events" in gap.reason
    assert seqs(items[1:]) == [8, 9, 10, 11, 12]
    assert not any(isinstance(i, GapNotice) for i in drain(bus.subscribe("a", {"a": 7})))


def test_star_resume_replays_unlisted_sessions_from_their_start() -> None:
    bus = EventBus()
    start(bus, "a")
    say(bus, "a", 0)
    start(bus, "b")  # started while the "*" subscriber was away
    say(bus, "b", 0)
    items = drain(bus.subscribe(ALL, {"a": 1}))
    assert seqs(items, "a") == [2] and seqs(items, "b") == [1, 2]
    assert drain(bus.subscribe(ALL)) == []  # no resume: live only


def test_resume_errors_name_the_session() -> None:
    bus = EventBus()
    start(bus, "a")
    with pytest.raises(P.ProtocolError) as info:
        bus.subscribe("ghost", {"ghost": 0})
    assert info.value.code == "unknown_session" and "ghost" in info.value.message
    with pytest.raises(P.ProtocolError) as info:
        bus.subscribe("a", {"a": 5})
    assert info.value.code == "bad_message" and "ahead" in info.value.message


def test_slow_subscriber_is_dropped_with_a_reason_and_others_get_everything() -> None:
    async def scenario() -> None:
        bus = EventBus(subscriber_queue=3)
        slow, fast = bus.subscribe("a"), bus.subscribe("a")
        start(bus, "a")
        received = []
        for i in range(10):
            say(bus, "a", i)  # never blocks, whatever the slow subscriber does
            received.extend(seqs(drain(fast)))
        assert received == list(range(1, 12))
        assert slow.dropped_reason is not None and "too slowly" in slow.dropped_reason
        with pytest.raises(SubscriptionDropped):
            await slow.get()
        assert await asyncio.wait_for(slow.wait_dropped(), 1) == slow.dropped_reason
        assert bus.dropped_count == 1 and bus.subscriber_count() == 1

    asyncio.run(scenario())


def test_waiting_get_receives_live_events_and_wakes_up_when_dropped() -> None:
    async def scenario() -> None:
        bus = EventBus(subscriber_queue=1)
        start(bus, "a")
        sub = bus.subscribe("a")
        waiter = asyncio.create_task(sub.get())
        await asyncio.sleep(0.01)
        say(bus, "a", 0)
        assert (await asyncio.wait_for(waiter, 1)).seq == 2
        waiter = asyncio.create_task(sub.get())
        await asyncio.sleep(0.01)
        for i in range(1, 4):  # a burst larger than the queue, with no chance to consume in between
            say(bus, "a", i)
        with pytest.raises(SubscriptionDropped):
            await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())


def test_session_lifecycle_rules() -> None:
    bus = EventBus()
    start(bus, "a")
    with pytest.raises(P.ProtocolError, match="live publisher") as info:
        start(bus, "a")
    assert info.value.code == "session_taken"
    end(bus, "a")
    assert bus.state("a") == "ended"
    with pytest.raises(P.ProtocolError, match="single-use"):
        start(bus, "a")
    with pytest.raises(ValueError, match="ended"):
        say(bus, "a", 9)
    with pytest.raises(ValueError, match="unknown"):
        say(bus, "nobody", 0)
    start(bus, "b")
    with pytest.raises(ValueError, match="published to session 'b'"):
        bus.publish("b", E.make_transcript("a", 0, "x", None, 0, 1))
    with pytest.raises(ValueError, match="end_session"):
        bus.publish("b", E.make_session_end("b", "end", 0, 0, 0, 0.0))
    with pytest.raises(ValueError, match="'end'"):
        bus.publish("b", E.make_transcript("b", 0, "x", None, 2.0, 1.0))
    assert bus.sessions()["b"] == {"state": "live", "first_seq": 1, "last_seq": 1}  # refused events took no seq


def test_ended_sessions_are_kept_for_a_bounded_count_and_time() -> None:
    now = [0.0]
    bus = EventBus(ended_sessions_kept=2, ended_session_ttl_s=60, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        start(bus, name)
        end(bus, name)
    assert bus.state("a") is None and bus.state("b") == "ended"
    with pytest.raises(P.ProtocolError) as info:
        bus.subscribe("a", {"a": 1})
    assert info.value.code == "unknown_session"
    assert seqs(drain(bus.subscribe("c", {"c": 0}))) == [1, 2]
    now[0] = 61.0
    assert bus.sessions() == {}
    start(bus, "a")  # a forgotten id may start afresh at seq 1
    assert bus.sessions()["a"]["last_seq"] == 1


def test_waiting_subscriber_of_a_never_started_session_leaves_no_trace() -> None:
    bus = EventBus()
    sub = bus.subscribe("later")
    assert bus.state("later") is None and bus.subscriber_count() == 1
    sub.close()
    assert bus.subscriber_count() == 0 and bus.sessions() == {}


def test_tenants_see_only_their_own_sessions_and_none_means_every_tenant() -> None:
    async def scenario() -> None:
        bus = EventBus()
        waiting_b = bus.subscribe("a1", tenant="B")  # a1 is not known yet: allowed to wait
        star_a, star_b, star_all = bus.subscribe(ALL, tenant="A"), bus.subscribe(ALL, tenant="B"), bus.subscribe(ALL)
        bus.start_session("a1", E.make_session_start("a1", None, False, 16000, 0.0), "A")
        bus.start_session("b1", E.make_session_start("b1", None, False, 16000, 0.0), "B")
        assert waiting_b.refusal is not None and waiting_b.refusal.code == "forbidden"
        with pytest.raises(SubscriptionDropped, match="another tenant"):
            waiting_b.get_nowait()
        assert {i.session for i in drain(star_a)} == {"a1"} and {i.session for i in drain(star_b)} == {"b1"}
        assert {i.session for i in drain(star_all)} == {"a1", "b1"}
        assert set(bus.sessions("A")) == {"a1"} and set(bus.sessions()) == {"a1", "b1"}
        assert {i.session for i in drain(bus.subscribe(ALL, {}, tenant="B"))} == {"b1"}
        for args in (("a1",), (ALL, {"a1": 0}), ("a1", {"a1": 0})):
            with pytest.raises(P.ProtocolError) as info:
                bus.subscribe(*args, tenant="B")
            assert info.value.code == "forbidden" and "another tenant" in info.value.message
        assert bus.dropped_count == 0  # a refusal is not a slow-subscriber drop

    asyncio.run(scenario())


def join(bus: EventBus, session: str, conversation: str, tenant: str | None = None, offset: float = 0.0) -> int:
    return bus.start_session(session, E.make_session_start(session, session.upper(), False, 16000, 0.0,
                                                           conversation, offset), tenant)


def test_a_conversation_subscriber_gets_every_participant_interleaved_and_resumes() -> None:
    bus = EventBus(replay_buffer=4)
    early = bus.subscribe("", conversation="call")  # before anyone joined
    join(bus, "ann", "call")
    start(bus, "other")  # a session of its own: never part of the conversation
    say(bus, "ann", 0)
    join(bus, "ben", "call", offset=1.5)
    for i in range(1, 3):
        say(bus, "ben", i)
        say(bus, "other", i)
        say(bus, "ann", i)
    items = drain(early)
    assert [(i.session, i.seq) for i in items] == [("ann", 1), ("ann", 2), ("ben", 1), ("ben", 2), ("ann", 3),
                                                   ("ben", 3), ("ann", 4)]
    assert items[2].data["offset"] == 1.5 and items[2].data["conversation"] == "call"
    assert bus.conversation_sessions("call") == ["ann", "ben"]
    # a late subscriber resumes Ann after seq 3 and gets Ben from his start (what the buffer of 4 still has)
    late = bus.subscribe("", {"ann": 3}, conversation="call")
    got = drain(late)
    assert [(i.session, i.seq) for i in got if isinstance(i, BusEvent)] == [("ben", 1), ("ben", 2), ("ben", 3),
                                                                         ("ann", 4)]
    with pytest.raises(P.ProtocolError, match="not known participants") as exc:
        bus.subscribe("", {"other": 1}, conversation="call")
    assert exc.value.code == "bad_message"
    before = bus.subscriber_count()
    late.close()
    early.close()
    assert bus.subscriber_count() == before - 2


def test_a_conversation_belongs_to_its_tenant() -> None:
    bus = EventBus()
    waiting = bus.subscribe("", conversation="call", tenant="t2")
    join(bus, "ann", "call", tenant="t1")
    with pytest.raises(SubscriptionDropped, match="another tenant"):
        drain(waiting)
    assert waiting.refusal is not None and waiting.refusal.code == "forbidden"
    with pytest.raises(P.ProtocolError, match="another tenant") as exc:
        bus.subscribe("", conversation="call", tenant="t2")
    assert exc.value.code == "forbidden"
    own = bus.subscribe("", conversation="call", tenant="t1")
    say(bus, "ann", 0)
    assert seqs(drain(own)) == [2]
