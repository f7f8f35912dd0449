"""Websocket gateway over real connections on 127.0.0.1: delivery, resume, limits and every protocol error.

The pipeline is replaced by ScriptedSink, a test double that records what the
gateway hands it and publishes deterministic transcript/emotion events, so these
tests isolate the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors.gateway import Gateway, GatewayConfig
from actors.gateway_auth import token_table
from magtkd_stream.wire import events as E
from magtkd_stream.wire import protocol as P

cv2 = pytest.importorskip("cv2")

TOKEN, TOKEN_B = "tok-a", "tok-b"
LABELS = ("anger", "joy", "neutral")


class ScriptedSink:
    """Records audio/video per session; publishes one utterance (transcript + emotion) every
    `every` audio chunks and `at_end` more when the session ends."""

    def __init__(
        self, every: int = 0, at_end: int = 2, end_delay: float = 0.0, text_bytes: int = 0, interim: bool = False
    ) -> None:
        self.every, self.at_end, self.end_delay, self.text_bytes = every, at_end, end_delay, text_bytes
        self.interim = interim
        self.samples: dict[str, int] = defaultdict(int)
        self.chunks: dict[str, int] = defaultdict(int)
        self.frames: dict[str, list[tuple[float, tuple[int, ...]]]] = defaultdict(list)
        self.utterances: dict[str, int] = defaultdict(int)
        self.opened: dict[str, tuple[Optional[str], bool]] = {}
        self.ended: list[str] = []
        self.fail_audio: set[str] = set()
        self.publish: Callable[[str, dict], int] = lambda s, e: 0
        self.keep_publishing: Optional[Callable[[], bool]] = None

    def attach(self, publish) -> None:
        self.publish = publish

    async def open(self, session, speaker, video, conversation=None, names=()) -> None:
        self.opened[session] = (speaker, video)

    async def audio(self, session, samples, wall) -> None:
        assert samples.dtype == np.float32 and samples.ndim == 1
        if session in self.fail_audio:
            raise RuntimeError("model crashed")
        self.samples[session] += len(samples)
        self.chunks[session] += 1
        if self.every and self.chunks[session] % self.every == 0:
            self._utterance(session)

    async def video(self, session, ts, frame) -> None:
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        self.frames[session].append((ts, frame.shape))

    async def end(self, session) -> None:
        await asyncio.sleep(self.end_delay)
        for _ in range(self.at_end):
            self._utterance(session)
            await asyncio.sleep(0)
        while self.keep_publishing is not None and self.keep_publishing():
            self._utterance(session)
            await asyncio.sleep(0.002)
        self.ended.append(session)

    def _utterance(self, session: str) -> None:
        i = self.utterances[session]
        self.utterances[session] += 1
        speaker, video = self.opened[session]
        text = f"utterance {i} of {session}" + "x" * self.text_bytes
        start, end = i * 1.0, i * 1.0 + 0.8
        probs = dict(zip(LABELS, np.roll([0.7, 0.2, 0.1], i).tolist(), strict=True))
        mods = {
            "text": E.modality_result(True, probs),
            "audio": E.modality_result(True, probs),
            "video": E.modality_result(video, probs if video else None),
        }
        common = dict(
            probs=probs,
            modalities=mods,
            start=start,
            speaker=speaker,
            model="scripted",
            stages_ms={"asr": 1.0, "fusion": 0.5},
            e2e_ms=2.0,
        )
        if self.interim:
            self.publish(session, E.make_emotion(session, i, end=start + 0.4, text="", final=False, **common))
        self.publish(session, E.make_transcript(session, i, text, speaker, start, end))
        self.publish(session, E.make_emotion(session, i, end=end, text=text, **common))


def run(coro: Awaitable[Any], timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def running(sink: ScriptedSink, **overrides: Any):
    cfg = GatewayConfig(**{"port": 0, "tokens": (TOKEN, TOKEN_B), "idle_timeout_s": 5.0, **overrides})
    gw = Gateway(cfg, sink)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def url(gw: Gateway) -> str:
    return f"{gw.scheme}://127.0.0.1:{gw.port}/"


def dial(gw: Gateway, source: Optional[str] = None, **kwargs: Any):
    """Connect to the gateway (over TLS when it serves wss://); source: a local address such as 127.0.0.2,
    so that per-address limits can be tried without touching the healthy session's 127.0.0.1."""
    if gw.scheme == "wss":
        kwargs.setdefault("ssl", getattr(gw, "client_ssl", None))
    if source is not None:
        kwargs["local_addr"] = (source, 0)
    return connect(url(gw), **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict:
    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    E.validate_event(msg)  # every server message matches its JSON Schema
    return msg


async def publisher(gw: Gateway, session: str, token: str = TOKEN, rate: int = 16000, **extra: Any) -> ClientConnection:
    ws = await dial(gw)
    hello = {
        "type": "hello",
        "version": 1,
        "token": token,
        "role": "publisher",
        "session": session,
        "sample_rate": rate,
    }
    await ws.send(json.dumps({**hello, **extra}))
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome" and welcome["role"] == "publisher", welcome
    return ws


async def subscriber(gw: Gateway, session: str, token: str = TOKEN, paused: bool = False, **extra: Any):
    """paused: the client library stops reading from the socket as soon as one message waits unread."""
    ws = await dial(gw, max_queue=1 if paused else 16)
    await ws.send(
        json.dumps({"type": "hello", "version": 1, "token": token, "role": "subscriber", "session": session, **extra})
    )
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    E.validate_event(welcome)
    return ws, welcome


async def send_audio(
    ws: ClientConnection, seconds: float, rate: int = 16000, chunk_ms: int = 20, pace: float = 0.0
) -> None:
    n = int(rate * seconds)
    t = np.arange(n) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    step = rate * chunk_ms // 1000
    for i in range(0, n, step):
        await ws.send(P.encode_audio(pcm[i : i + step]))
        if pace:
            await asyncio.sleep(pace)


async def finish(ws: ClientConnection) -> dict:
    await ws.send(json.dumps({"type": "end"}))
    while True:
        msg = await recv_json(ws)
        if msg["type"] == "ended":
            break
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1000
    return msg


async def collect(ws: ClientConnection, sessions: set[str]) -> list[dict]:
    """Events until every named session's session_end."""
    events, open_ = [], set(sessions)
    while open_:
        msg = await recv_json(ws)
        events.append(msg)
        if msg["type"] == "session_end":
            open_.discard(msg["session"])
    return events


def assert_complete(events: list[dict], session: str, last_seq: Optional[int] = None) -> list[dict]:
    mine = [e for e in events if e.get("session") == session and "seq" in e]
    assert [e["seq"] for e in mine] == list(range(1, len(mine) + 1)), "each event once, in order, no gaps"
    assert mine[0]["type"] == "session_start" and mine[-1]["type"] == "session_end"
    if last_seq is not None:
        assert mine[-1]["seq"] == last_seq
    return mine


def jpeg(h: int = 24, w: int = 32) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((h, w, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


async def expect_error(ws: ClientConnection, code: str, fatal: bool, *words: str, close: Optional[int] = None) -> dict:
    while True:
        msg = await recv_json(ws)
        if msg["type"] == "error":
            break
    assert msg["code"] == code and msg["fatal"] is fatal, msg
    for word in words:
        assert word in msg["message"], (word, msg["message"])
    if fatal:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == (close if close is not None else P.ERROR_CODES[code][0]) is not None
        assert code in (ws.close_reason or "")
    return msg


# ------------------------------------------------------------ delivery


def test_two_publishers_three_subscribers_every_event_once_and_in_order() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(every=5, at_end=2, interim=True)
        async with running(sink) as gw:
            (sub1, w1), (sub2, _), (star, _) = [await subscriber(gw, s) for s in ("s1", "s2", "*")]
            assert w1["sessions"] == {}  # waiting for a session that has not started yet is allowed

            async def publish(session: str, rate: int, video: bool) -> dict:
                ws = await publisher(gw, session, rate=rate, speaker=f"spk-{session}", video=video)
                if video:
                    for k in range(4):
                        await ws.send(P.encode_video(k / 10, jpeg()))
                await send_audio(ws, 0.6, rate, pace=0.002)
                return await finish(ws)

            ended1, ended2 = await asyncio.gather(publish("s1", 16000, True), publish("s2", 44100, False))
            got1, got2, got_all = await asyncio.gather(
                collect(sub1, {"s1"}), collect(sub2, {"s2"}), collect(star, {"s1", "s2"})
            )
            for ws in (sub1, sub2, star):
                await ws.close()
        for session, ended, got in (("s1", ended1, got1), ("s2", ended2, got2)):
            mine = assert_complete(got, session, ended["last_seq"])
            assert {e["session"] for e in got} == {session}
            utterances = sink.utterances[session]
            assert utterances == sink.chunks[session] // 5 + 2 >= 3 + 2
            assert [e["type"] for e in mine].count("emotion") == utterances
            assert [e["type"] for e in mine].count("transcript") == utterances
            assert [e["type"] for e in mine[1:4]] == ["emotion_interim", "transcript", "emotion"]
            assert mine == assert_complete(got_all, session)  # the "*" subscriber saw the very same events
            assert all(e["speaker"] == f"spk-{session}" for e in mine if e["type"] in ("transcript", "emotion"))
            assert abs(sink.samples[session] - 0.6 * 16000) <= 2
        assert mine[-1]["reason"] == "end" and sink.opened["s1"] == ("spk-s1", True)
        assert [ts for ts, _ in sink.frames["s1"]] == [0.0, 0.1, 0.2, 0.3] and sink.frames["s1"][0][1] == (24, 32, 3)
        emotion = next(e for e in got1 if e["type"] == "emotion")
        assert emotion["present"] == ["text", "audio", "video"] and emotion["modalities"]["video"]["probs"]

    run(scenario())


def test_44k_audio_reaches_the_sink_resampled_to_16k() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(at_end=0)
        async with running(sink) as gw:
            ws = await publisher(gw, "cd", rate=44100)
            await send_audio(ws, 1.0, 44100, chunk_ms=23)
            await finish(ws)
        assert abs(sink.samples["cd"] - 16000) <= 2

    run(scenario())


def test_subscriber_reconnects_with_last_seq_and_misses_nothing() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(every=2, at_end=1)
        async with running(sink) as gw:
            sub, _ = await subscriber(gw, "talk")
            pub = await publisher(gw, "talk")
            await send_audio(pub, 0.2)  # 10 chunks -> 5 utterances
            first = [await recv_json(sub) for _ in range(4)]
            await sub.close()
            await send_audio(pub, 0.2)  # published while nobody listens
            await asyncio.sleep(0.05)
            last = first[-1]["seq"]
            sub, welcome = await subscriber(gw, "talk", last_seq=last)
            assert welcome["sessions"]["talk"]["state"] == "live" and welcome["sessions"]["talk"]["last_seq"] > last
            await send_audio(pub, 0.2)
            ended = await finish(pub)
            rest = await collect(sub, {"talk"})
            # A "*" subscriber resuming with an empty map gets every session it never saw, from the start.
            star, _ = await subscriber(gw, "*", resume={})
            everything = await collect(star, {"talk"})
            await sub.close()
            await star.close()
        assert_complete(first + rest, "talk", ended["last_seq"])
        assert assert_complete(everything, "talk") == first + rest

    run(scenario())


def test_resume_older_than_the_replay_buffer_is_told_with_a_gap() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(at_end=5)
        async with running(sink, replay_buffer=4) as gw:
            pub = await publisher(gw, "old")
            await send_audio(pub, 0.1)
            ended = await finish(pub)
            sub, welcome = await subscriber(gw, "old", resume={"old": 1})
            last = ended["last_seq"]
            assert welcome["sessions"]["old"] == {"state": "ended", "first_seq": last - 3, "last_seq": last}
            gap = await recv_json(sub)
            assert gap["type"] == "gap" and (gap["from_seq"], gap["to_seq"]) == (2, last - 4)
            assert "4 events" in gap["reason"]
            tail = [await recv_json(sub) for _ in range(4)]
            assert [e["seq"] for e in tail] == list(range(last - 3, last + 1)) and tail[-1]["type"] == "session_end"
            await sub.close()

    run(scenario())


def test_slow_subscriber_is_dropped_with_a_reason_while_others_get_everything() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(at_end=0, text_bytes=60_000)
        async with running(sink, subscriber_queue=64, replay_buffer=64) as gw:
            sink.keep_publishing = lambda: gw.bus.dropped_count == 0 and sink.utterances["busy"] < 400
            slow, _ = await subscriber(gw, "busy", paused=True)  # reads nothing until the end
            fast, _ = await subscriber(gw, "busy")
            other, _ = await subscriber(gw, "calm")
            pub, calm = await publisher(gw, "busy"), await publisher(gw, "calm")
            await send_audio(calm, 0.1)
            got_calm = asyncio.create_task(collect(other, {"calm"}))
            got_fast = asyncio.create_task(collect(fast, {"busy"}))
            await send_audio(pub, 0.1)
            ended = await finish(pub)
            await finish(calm)
            assert_complete(await got_fast, "busy", ended["last_seq"])
            assert_complete(await got_calm, "calm")
            assert gw.bus.dropped_count == 1
            seen = []
            with pytest.raises(ConnectionClosed):
                while True:
                    seen.append(json.loads(await asyncio.wait_for(slow.recv(), 5)))
            assert seen[-1]["type"] == "dropped" and "too slowly" in seen[-1]["reason"]
            E.validate_event(seen[-1])
            assert slow.close_code == P.CLOSE_DROPPED
            delivered = [e["seq"] for e in seen if "seq" in e]
            assert delivered == list(range(1, len(delivered) + 1)) and delivered[-1] < ended["last_seq"]
            for ws in (fast, other):
                await ws.close()

    run(scenario(), timeout=30)


def test_publisher_that_vanishes_without_end_is_flushed_and_ended() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(at_end=1)
        async with running(sink, idle_timeout_s=0.5) as gw:
            sub, _ = await subscriber(gw, "gone")
            pub = await publisher(gw, "gone")
            for k in range(3):  # pings keep an otherwise silent publisher alive past the idle timeout
                await asyncio.sleep(0.3)
                await pub.send(json.dumps({"type": "ping", "id": f"p{k}"}))
                assert await recv_json(pub) == {"type": "pong", "version": 1, "id": f"p{k}"}
            await send_audio(pub, 0.1)
            await pub.close()
            events = assert_complete(await collect(sub, {"gone"}), "gone")
            await sub.close()
        assert events[-1]["reason"] == "disconnected" and events[-1]["audio_seconds"] == pytest.approx(0.1)
        assert [e["type"] for e in events[1:-1]] == ["transcript", "emotion"]  # the flush still published
        assert sink.ended == ["gone"] and sink.samples["gone"] == 1600

    run(scenario())


def test_stop_ends_live_sessions_and_subscribers_get_their_last_events() -> None:
    async def scenario() -> None:
        sink = ScriptedSink(at_end=1)
        gw = Gateway(GatewayConfig(port=0, tokens=(TOKEN,)), sink)
        await gw.start()
        sub, _ = await subscriber(gw, "live")
        pub = await publisher(gw, "live")
        lurker = await dial(gw)  # never says hello
        await send_audio(pub, 0.1)
        await asyncio.sleep(0.05)
        await asyncio.wait_for(gw.stop(), 3)  # does not wait for the lurker's idle timeout
        events = await collect(sub, {"live"})
        assert assert_complete(events, "live")[-1]["reason"] == "server_stopping"
        assert sink.ended == ["live"]
        for ws in (sub, pub, lurker):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1001

    run(scenario())


def test_the_example_client_in_the_protocol_doc_works() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    code = doc.split("<!-- example: client -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]

    async def scenario() -> None:
        sink = ScriptedSink(every=5, at_end=1)
        async with running(sink) as gw:
            ns: dict[str, Any] = {}
            exec(compile(code, "docs/PROTOCOL.md example", "exec"), ns)
            ns["URL"], ns["TOKEN"] = url(gw), TOKEN
            tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(4800) / 16000)).astype(np.int16)
            follower = asyncio.create_task(ns["subscribe"]("demo-1", until_session_end=True))
            await asyncio.sleep(0.1)
            last_seq = await ns["publish"]("demo-1", tone, jpegs=[(0.0, jpeg()), (0.1, jpeg())], speaker="Ann")
            assert await asyncio.wait_for(follower, 5) == {"demo-1": last_seq}
        assert sink.samples["demo-1"] == 4800 and len(sink.frames["demo-1"]) == 2
        assert sink.opened["demo-1"] == ("Ann", True)

    run(scenario())


# ------------------------------------------------------------ errors, each next to a healthy session


async def healthy_session(gw: Gateway, live: asyncio.Event) -> None:
    """A well-behaved session that must complete untouched while a bad client misbehaves."""
    sub, _ = await subscriber(gw, "good")
    pub = await publisher(gw, "good")
    live.set()
    for _ in range(5):
        await send_audio(pub, 0.1, pace=0.01)
    ended = await finish(pub)
    events = await collect(sub, {"good"})
    mine = assert_complete(events, "good", ended["last_seq"])
    assert mine[-1]["reason"] == "end" and [e["type"] for e in mine].count("emotion") == 25 // 5 + 2
    await sub.close()


def hello(role: str = "publisher", **over: Any) -> str:
    msg: dict[str, Any] = {"type": "hello", "version": 1, "token": TOKEN, "role": role, "session": "bad"}
    if role == "publisher":
        msg["sample_rate"] = 16000
    msg.update(over)
    return json.dumps({k: v for k, v in msg.items() if v is not None})


async def raw(gw: Gateway, first: Optional[str | bytes] = None, source: Optional[str] = None) -> ClientConnection:
    ws = await dial(gw, source)
    if first is not None:
        await ws.send(first)
    return ws


async def case_bad_json(gw, sink, live) -> None:
    await expect_error(await raw(gw, "{not json"), "bad_json", True, "not valid JSON")


async def case_unknown_type(gw, sink, live) -> None:
    await expect_error(await raw(gw, '{"type":"subscribe","version":1}'), "unknown_type", True, "hello")
    ws = await publisher(gw, "bad")  # after hello: the message is dropped, the session goes on
    await ws.send('{"type":"bogus"}')
    await expect_error(ws, "unknown_type", False, "bogus")
    await ws.send('{"type":"end"')
    await expect_error(ws, "bad_json", False)
    await send_audio(ws, 0.1)
    await finish(ws)
    assert sink.samples["bad"] == 1600


async def case_bad_message(gw, sink, live) -> None:
    await expect_error(await raw(gw, hello(sample_rate=None)), "bad_message", True, "sample_rate")
    await expect_error(await raw(gw, b"\x01\x00\x00"), "bad_message", True, "text hello")
    ws = await publisher(gw, "bad")
    await ws.send(b"\x07abc")
    await expect_error(ws, "bad_message", False, "0x07")
    await ws.send(b"\x01\x00\x00\x00")
    await expect_error(ws, "bad_message", False, "even")
    await ws.send(P.encode_video(0.0, jpeg()))
    await expect_error(ws, "bad_message", False, '"video": true')
    await finish(ws)


async def case_bad_version(gw, sink, live) -> None:
    await expect_error(await raw(gw, hello(version=7)), "bad_version", True, "7", "speaks 1")


async def case_bad_token(gw, sink, live) -> None:
    await expect_error(await raw(gw, hello(token="guess")), "bad_token", True, "token")
    assert gw.bus.state("bad") is None


async def case_forbidden(gw, sink, live) -> None:
    await live.wait()  # "good" is TOKEN's; TOKEN_B is another tenant (each plain token is its own)
    await expect_error(await raw(gw, hello("subscriber", session="good", token=TOKEN_B)), "forbidden", True,
                       "another tenant")
    await expect_error(await raw(gw, hello("subscriber", session="*", token=TOKEN_B, resume={"good": 0})),
                       "forbidden", True, "'good'")
    star, welcome = await subscriber(gw, "*", token=TOKEN_B, resume={})
    assert welcome["type"] == "welcome" and welcome["sessions"] == {}
    own = await publisher(gw, "b-own", token=TOKEN_B)
    await send_audio(own, 0.1)
    await finish(own)
    events = await collect(star, {"b-own"})
    assert {e["session"] for e in events} == {"b-own"}  # the other tenant's "good" never shows up
    await star.close()


async def case_too_many_hellos(gw, sink, live) -> None:
    answers = []
    for _ in range(4):  # burst 3 from 127.0.0.2; the healthy session connects from 127.0.0.1
        ws = await raw(gw, hello(token="guess"), source="127.0.0.2")
        answers.append((await recv_json(ws))["code"])
        await ws.close()
    assert answers == ["bad_token"] * 3 + ["too_many_hellos"]
    ws = await raw(gw, hello(token="guess"), source="127.0.0.2")
    await expect_error(ws, "too_many_hellos", True, "hello_rate_per_address", "127.0.0.2")


async def case_unknown_session(gw, sink, live) -> None:
    await expect_error(
        await raw(gw, hello("subscriber", session="ghost", last_seq=3)), "unknown_session", True, "ghost"
    )


async def case_session_taken(gw, sink, live) -> None:
    await live.wait()
    await expect_error(await raw(gw, hello(session="good")), "session_taken", True, "good")


async def case_speaker_taken(gw, sink, live) -> None:
    ann = await publisher(gw, "c-ann", token=TOKEN_B, speaker="Ann", conversation="call")
    await expect_error(await raw(gw, hello(session="c-ann2", token=TOKEN_B, speaker="Ann", conversation="call")),
                       "speaker_taken", True, "'Ann'", "'call'")
    assert gw.bus.state("c-ann2") is None  # refused before the session started
    await expect_error(await raw(gw, hello(session="c-bo", speaker="Bo", conversation="call")),  # TOKEN: another tenant
                       "forbidden", True, "another tenant")
    await finish(ann)
    ann2 = await publisher(gw, "c-ann2", token=TOKEN_B, speaker="Ann", conversation="call")  # the name is free again
    await finish(ann2)


async def case_too_many_sessions(gw, sink, live) -> None:
    first = [await publisher(gw, f"b{i}", token=TOKEN_B) for i in range(2)]
    await expect_error(await raw(gw, hello(session="b2", token=TOKEN_B)), "too_many_sessions", True, "limit 2")
    for ws in first:
        await finish(ws)
    await finish(await publisher(gw, "b3", token=TOKEN_B))  # room again once sessions end


async def case_too_many_subscribers(gw, sink, live) -> None:
    held = [(await subscriber(gw, "*", token=TOKEN_B))[0] for _ in range(2)]
    await expect_error(await raw(gw, hello("subscriber", session="*", token=TOKEN_B)), "too_many_subscribers", True,
                       "limit 2")
    await held[0].close()
    for _ in range(100):  # the server sees the close, then frees the slot
        again, welcome = await subscriber(gw, "*", token=TOKEN_B)
        if welcome["type"] == "welcome":
            break
        await again.close()
        await asyncio.sleep(0.02)
    assert welcome["type"] == "welcome" and welcome["limits"]["max_subscribers_per_token"] == 2
    await again.close()
    await held[1].close()


async def case_oversized(gw, sink, live) -> None:
    ws = await publisher(gw, "bad")
    await ws.send(P.encode_audio(np.zeros(40_000, np.int16)))  # 80 kB > 64 kB
    await expect_error(ws, "oversized", True, "80001 bytes", "65536")
    for _ in range(100):  # the session still flushes through the sink, then ends
        if gw.bus.state("bad") == "ended":
            break
        await asyncio.sleep(0.01)
    assert gw.bus.state("bad") == "ended" and sink.ended == ["bad"]


async def case_bad_sample_rate(gw, sink, live) -> None:
    await expect_error(await raw(gw, hello(sample_rate=12000)), "bad_sample_rate", True, "12000", "16000")


async def case_bad_jpeg(gw, sink, live) -> None:
    ws = await publisher(gw, "bad", video=True)
    await ws.send(P.encode_video(0.0, b"\xff\xd8\xff\xdb" + b"\x00" * 200))  # header looks like JPEG, data is not
    await expect_error(ws, "bad_jpeg", False)
    await ws.send(P.encode_video(0.1, b"PNG not a jpeg"))
    await expect_error(ws, "bad_jpeg", False, "not a JPEG")
    await ws.send(P.encode_video(0.2, jpeg()))
    await finish(ws)
    assert [ts for ts, _ in sink.frames["bad"]] == [0.2]


async def case_rate_limited(gw, sink, live) -> None:
    ws = await publisher(gw, "bad", video=True)
    frame = jpeg()
    for k in range(20):
        await ws.send(P.encode_video(k / 100, frame))
    await expect_error(ws, "rate_limited", False, "5 fps")
    await ws.send(json.dumps({"type": "end"}))
    msgs = []
    while (msg := await recv_json(ws))["type"] != "ended":
        msgs.append(msg)
    assert msgs == [], "at most one rate_limited error per second"
    assert 5 <= len(sink.frames["bad"]) <= 8  # a 5-frame burst, plus refill while 20 frames are processed


async def case_after_end(gw, sink, live) -> None:
    ws = await publisher(gw, "bad")
    await send_audio(ws, 0.1)
    await ws.send(json.dumps({"type": "end"}))
    await send_audio(ws, 0.02)
    await expect_error(ws, "after_end", False, "after end")
    ended = await recv_json(ws)
    assert ended["type"] == "ended" and "bad" in sink.ended  # answered only after the sink flushed
    assert sink.samples["bad"] == 1600


async def case_idle_timeout(gw, sink, live) -> None:
    await expect_error(await raw(gw), "idle_timeout", True, "hello")
    watcher, _ = await subscriber(gw, "bad")
    ws = await publisher(gw, "bad")
    await expect_error(ws, "idle_timeout", True, "0.4 s")
    events = await collect(watcher, {"bad"})
    assert events[-1]["reason"] == "idle_timeout"
    await watcher.close()


async def case_not_publisher(gw, sink, live) -> None:
    ws, _ = await subscriber(gw, "good")
    await ws.send(P.encode_audio(np.zeros(10, np.int16)))
    await expect_error(ws, "not_publisher", False, "binary")
    await ws.send('{"type":"end"}')
    await expect_error(ws, "not_publisher", False, "end")
    await ws.send('{"type":"ping","id":5}')
    assert await recv_json(ws) == {"type": "pong", "version": 1, "id": 5}  # still connected
    await ws.close()


async def case_internal(gw, sink, live) -> None:
    sink.fail_audio.add("bad")
    ws = await publisher(gw, "bad")
    await send_audio(ws, 0.02)
    await expect_error(ws, "internal", True, "model crashed")
    assert gw.bus.sessions()["bad"]["state"] == "ended" and "bad" in sink.ended


CASES: dict[str, Callable[..., Awaitable[None]]] = {
    name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_")
}


EXTRA_LIMITS: dict[str, dict[str, Any]] = {"too_many_hellos": dict(hello_rate_per_address=0.5, hello_burst_per_address=3)}


def test_every_error_code_is_exercised() -> None:
    assert set(CASES) == set(P.ERROR_CODES)


@pytest.mark.parametrize("code", sorted(CASES))
def test_protocol_error_is_answered_while_another_session_goes_on(code: str) -> None:
    async def scenario() -> None:
        sink = ScriptedSink(every=5, at_end=2, end_delay=0.05)
        limits = dict(idle_timeout_s=0.4, max_message_bytes=65536, max_video_fps=5, max_sessions_per_token=2,
                      max_subscribers_per_token=2, **EXTRA_LIMITS.get(code, {}))
        async with running(sink, **limits) as gw:
            live = asyncio.Event()
            await asyncio.gather(healthy_session(gw, live), CASES[code](gw, sink, live))

    run(scenario())


# ------------------------------------------------------------ building blocks


def test_inbound_queue_sheds_video_first_and_never_drops_audio() -> None:
    from actors.gateway_inbound import END, Inbound, InboundQueue

    async def scenario() -> None:
        q = InboundQueue(3)
        audio = [Inbound("audio", samples=np.full(4, k, np.float32)) for k in range(3)]
        frames = [Inbound("video", ts=k / 10, frame=np.zeros((2, 2, 3), np.uint8)) for k in range(4)]
        assert q.put_video(frames[0]) and await q.put(audio[0]) and q.put_video(frames[1])
        assert q.put_video(frames[2]) and q.shed == 1  # full: the stalest queued frame made room
        assert await q.put(audio[1]) and q.shed == 2  # audio takes the place of a frame
        assert await q.put(audio[2]) and q.shed == 3
        assert not q.put_video(frames[3]) and q.shed == 4  # only audio queued: the new frame is shed
        blocked = asyncio.create_task(q.put(END))
        await asyncio.sleep(0.01)
        assert not blocked.done()  # audio/end wait for room instead of dropping anything
        assert (await q.get()) is audio[0]
        assert await asyncio.wait_for(blocked, 1)
        assert [await q.get() for _ in range(3)] == [audio[1], audio[2], END]

    run(scenario())


def test_rate_limiter_allows_one_second_burst_then_the_rate() -> None:
    from actors.gateway_inbound import RateLimiter

    now = [0.0]
    limiter = RateLimiter(5, clock=lambda: now[0])
    assert sum(limiter.allow() for _ in range(20)) == 5
    now[0] = 1.0
    assert sum(limiter.allow() for _ in range(20)) == 5
    now[0] = 1.25
    assert limiter.allow() and not limiter.allow()


def test_gateway_config_from_mapping_and_tokens_from_the_environment(monkeypatch) -> None:
    from magtkd_stream.config import ConfigError

    cfg = GatewayConfig.from_mapping({"port": 0, "tokens": ["a"], "max_video_fps": 15, "idle_timeout_s": 2})
    assert cfg.max_video_fps == 15 and cfg.tokens == ("a",)
    monkeypatch.setenv("MAGTKD_TOKENS", " b, c ,")
    assert token_table(cfg).tokens == ("a", "b", "c")
    with pytest.raises(ConfigError, match="gateway.max_fps"):
        GatewayConfig.from_mapping({"max_fps": 3})
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        GatewayConfig.from_mapping({"idle_timeout_s": 0})
    with pytest.raises(ConfigError, match="validate_events"):
        GatewayConfig.from_mapping({"validate_events": 1})
    monkeypatch.delenv("MAGTKD_TOKENS")
    with pytest.raises(ConfigError, match="MAGTKD_TOKENS"):
        Gateway(GatewayConfig(), ScriptedSink())
