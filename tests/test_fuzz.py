"""Property-based fuzzing of the client message parser and of a live gateway (hypothesis).

The parser must answer any text with a message or a ProtocolError whose code is
not `internal`, and every error must be sendable as a schema-valid `error`
message. The live gateway gets random text and binary messages from several
clients at once, before and after a valid hello, while a good session streams:
no client is ever answered `internal`, the good session loses nothing, and the
server accepts a new session afterwards. Case counts are fixed (FUZZ_*) so CI
time is bounded; HYPOTHESIS_PROFILE=long raises them for a longer local run.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from magtkd_stream.wire import events as E  # noqa: E402
from magtkd_stream.wire import protocol as P  # noqa: E402
from magtkd_stream.wire.schema import check  # noqa: E402
from test_gateway import TOKEN, ScriptedSink, dial, healthy_session, publisher, running, send_audio, finish  # noqa: E402

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
FUZZ_PARSER_CASES = 5000 if LONG else 600
FUZZ_LIVE_CASES = 200 if LONG else 25  # each: 3 hostile clients beside one good session

# ------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
FIELDS = ["type", "version", "token", "role", "session", "sample_rate", "speaker", "video", "id", "resume",
          "last_seq"]
VALID_HELLO = {"type": "hello", "version": 1, "token": TOKEN, "role": "publisher", "session": "fz",
               "sample_rate": 16000}
# A valid message with some fields replaced or removed: reaches the schema checks behind the JSON parse.
mutated = st.builds(
    lambda base, changes, drop: {**{k: v for k, v in base.items() if k not in drop}, **changes},
    st.sampled_from([VALID_HELLO, {**VALID_HELLO, "role": "subscriber", "session": "*"}, {"type": "end"},
                     {"type": "ping", "id": 1}]),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
    st.sets(st.sampled_from(FIELDS), max_size=2),
)
deep = st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n)
long_strings = st.builds(lambda k, n: json.dumps({**VALID_HELLO, k: "x" * n}),
                         st.sampled_from(["token", "speaker", "session", "id"]), st.integers(0, 5000))
surrogates = st.builds(lambda k: json.dumps({**VALID_HELLO, k: "\udcff"}), st.sampled_from(["token", "speaker"]))
texts = st.one_of(
    mutated.map(json.dumps), json_values.map(json.dumps), st.text(max_size=60), deep, long_strings, surrogates,
)
binaries = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=64).map(lambda b: bytes([P.TAG_AUDIO]) + b),
    st.builds(lambda ts, b: struct.pack("<Bd", P.TAG_VIDEO, ts) + b, st.floats(), st.binary(max_size=64)),
)
messages = st.one_of(texts, binaries)


# ------------------------------------------------------------ the parser


@settings(max_examples=FUZZ_PARSER_CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(texts, st.binary(max_size=80)))
def test_parser_answers_any_input_with_a_message_or_a_client_error(raw: Any) -> None:
    try:
        if isinstance(raw, bytes) and raw[:1] in (bytes([P.TAG_AUDIO]), bytes([P.TAG_VIDEO])):
            P.parse_binary(raw)
        else:
            P.parse_client_text(raw)
    except P.ProtocolError as exc:
        assert exc.code != "internal" and exc.code in P.ERROR_CODES, exc
        msg = E.error_message(exc)
        check(msg, "error.json")  # sendable: schema-valid, short, and encodable
        assert len(json.dumps(msg).encode("utf-8")) < 4096


# ------------------------------------------------------------ a live gateway


async def hostile(gw: Any, n: int, script: list[Any], after_hello: bool, replies: list[dict]) -> None:
    """One client: maybe a valid hello first, then the fuzzed messages; keeps every error it is sent."""
    try:
        if after_hello:
            ws = await publisher(gw, f"fz-{n}")
        else:
            ws = await dial(gw)
        for msg in script:
            await ws.send(msg)
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            if reply.get("type") == "error":
                replies.append(reply)
    except (ConnectionClosed, asyncio.TimeoutError, TimeoutError):
        pass
    finally:
        if "ws" in locals():
            await ws.close()


@settings(max_examples=FUZZ_LIVE_CASES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.lists(messages, min_size=1, max_size=6), st.booleans()), min_size=3, max_size=3))
def test_live_gateway_never_answers_internal_and_the_good_session_loses_nothing(clients: list) -> None:
    async def scenario() -> None:
        sink = ScriptedSink(every=5, at_end=2)
        async with running(sink, idle_timeout_s=2.0, max_message_bytes=65536) as gw:
            live = asyncio.Event()
            replies: list[dict] = []
            await asyncio.gather(
                healthy_session(gw, live),
                *(hostile(gw, i, script, after, replies) for i, (script, after) in enumerate(clients)),
            )
            assert all(r["code"] != "internal" for r in replies), [r for r in replies if r["code"] == "internal"]
            for reply in replies:
                check(reply, "error.json")
            after = await publisher(gw, "after-fuzz")  # the server still takes new sessions
            await send_audio(after, 0.1)
            assert (await finish(after))["type"] == "ended"

    asyncio.run(asyncio.wait_for(scenario(), 30))
