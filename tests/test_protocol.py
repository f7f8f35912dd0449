"""Protocol v1: client message parsing, binary layout, event builders and their JSON Schemas."""

from __future__ import annotations

import copy
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from magtkd_stream.names import MODALITIES
from magtkd_stream.wire import events as E
from magtkd_stream.wire import protocol as P
from magtkd_stream.wire.resample import StreamResampler, pcm16_to_float32
from magtkd_stream.wire.schema import CLIENT_SCHEMAS, SCHEMA_DIR, SERVER_SCHEMAS, load_schema

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("anger", "joy", "neutral")


def hello_pub(**over):
    msg = {"type": "hello", "version": 1, "token": "tok", "role": "publisher", "session": "s1", "sample_rate": 16000}
    msg.update(over)
    return json.dumps({k: v for k, v in msg.items() if v is not None})


def hello_sub(**over):
    msg = {"type": "hello", "version": 1, "token": "tok", "role": "subscriber", "session": "s1"}
    msg.update(over)
    return json.dumps(msg)


def expect(code: str, raw, *words: str) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as info:
        if isinstance(raw, (bytes, bytearray)):
            P.parse_binary(bytes(raw))
        else:
            P.parse_client_text(raw)
    assert info.value.code == code, info.value
    for word in words:
        assert word in info.value.message, (word, info.value.message)
    return info.value


def emotion(**over):
    probs = {"anger": 0.1, "joy": 0.7, "neutral": 0.2}
    mods = {
        "text": E.modality_result(True, probs),
        "audio": E.modality_result(True, {"anger": 0.3, "joy": 0.3, "neutral": 0.4}),
        "video": E.modality_result(False),
    }
    kwargs = dict(
        probs=probs,
        modalities=mods,
        start=1.0,
        end=2.5,
        speaker="A",
        text="great",
        model="magt-test",
        stages_ms={"asr": 12.0, "fusion": 1.5},
        e2e_ms=40.0,
    )
    kwargs.update(over)
    event = E.make_emotion("s1", 3, **kwargs)
    event["seq"] = 7
    return event


# ------------------------------------------------------------ schemas


def test_every_schema_file_is_valid_draft_2020_12_and_every_message_has_one() -> None:
    files = {p.name for p in SCHEMA_DIR.glob("*.json")}
    named = set(CLIENT_SCHEMAS.values()) | set(SERVER_SCHEMAS.values())
    assert named <= files
    assert files - named == {"defs.json"}
    for name in files:
        Draft202012Validator.check_schema(load_schema(name))


def test_protocol_doc_covers_every_message_and_error_code() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    for name in list(SERVER_SCHEMAS) + ["hello", "end", "ping"]:
        assert f"`{name}`" in doc, f"docs/PROTOCOL.md does not describe message {name}"
    for code, (close, _) in P.ERROR_CODES.items():
        row = rf"\| `{code}` \|.*\| {close if close is not None else 'never'} \|"
        assert re.search(row, doc), f"docs/PROTOCOL.md lacks a table row for error code {code} (close code {close})"
    enum = load_schema("error.json")["properties"]["code"]["enum"]
    assert sorted(enum) == sorted(P.ERROR_CODES)


# ------------------------------------------------------------ client text messages


def test_publisher_hello_parses_with_defaults_and_options() -> None:
    msg = P.parse_client_text(hello_pub())
    assert msg == P.PublisherHello("tok", "s1", 16000, None, False)
    msg = P.parse_client_text(hello_pub(sample_rate=44100, speaker="Ann", video=True))
    assert msg == P.PublisherHello("tok", "s1", 44100, "Ann", True)


def test_subscriber_hello_normalises_last_seq_into_resume() -> None:
    assert P.parse_client_text(hello_sub()).resume is None
    assert P.parse_client_text(hello_sub(last_seq=5)).resume == {"s1": 5}
    star = P.parse_client_text(hello_sub(session="*", resume={"a": 1, "b": 0}))
    assert star.session == "*" and star.resume == {"a": 1, "b": 0}


def test_end_and_ping() -> None:
    assert P.parse_client_text('{"type":"end"}') == P.EndMessage()
    assert P.parse_client_text('{"type":"ping","id":"x7"}') == P.PingMessage("x7")


def test_text_errors_name_the_problem_and_what_is_accepted() -> None:
    expect("bad_json", "{not json", "not valid JSON")
    expect("bad_message", "[1, 2]", "JSON object")
    expect("bad_message", '{"version": 1}', "missing field 'type'")
    expect("unknown_type", '{"type": "bogus", "version": 1}', '"bogus"', "hello")
    expect("bad_version", hello_pub(version=2), "2", "speaks 1")
    expect("bad_version", hello_pub(version=True), "true")
    expect("bad_message", hello_pub(session=None), "missing field 'session'")
    expect("bad_message", hello_pub(session="has space"), "'session'", "A-Za-z0-9")
    expect("bad_message", hello_pub(sampel_rate=1), "sampel_rate", "accepted fields")
    expect("bad_message", hello_pub(sample_rate="16000"), "'sample_rate'", "integer")
    expect("bad_sample_rate", hello_pub(sample_rate=12345), "12345", "44100")
    expect("bad_message", hello_pub(role="admin"), "'role'", "publisher")
    expect("bad_message", hello_sub(last_seq=1, resume={"s1": 1}), "not both")
    expect("bad_message", hello_sub(resume={"other": 1}), "other")
    expect("bad_message", hello_sub(session="*", last_seq=3), "last_seq")
    expect("bad_message", hello_sub(last_seq=-1), "last_seq")
    expect("bad_message", '{"type":"end","extra":1}', "extra")


def test_hostile_text_is_bad_message_naming_the_limit() -> None:
    expect("bad_message", "[" * 100_000, "deeper than the limit of 8")
    expect("bad_message", '{"type":"ping","id":' + "[" * 9 + "]" * 9 + "}", "field 'id.0", "limit of 8")
    expect("bad_message", hello_pub(token="\udcff"), "'token' is not valid Unicode")
    expect("bad_message", '{"type":"ping","id":"\\ud800"}', "'id' is not valid Unicode")
    expect("bad_message", hello_pub(token="t" * 900_000), "'token' is 900000 characters long", "1024")
    expect("bad_message", hello_pub(speaker="s" * 900), "'speaker' is 900 characters long; at most 128")
    expect("bad_message", hello_pub(token="t" * 513), "'token' is 513 characters long; at most 512")
    expect("bad_message", '{"type":"ping","id":"' + "i" * 129 + '"}', "'id'", "at most 128")
    expect("bad_message", '{"type":"ping","id":' + "9" * 20 + "}", "<= 9007199254740991")
    assert P.parse_client_text('{"type":"ping","id":9007199254740991}') == P.PingMessage(9007199254740991)


# ------------------------------------------------------------ binary messages


def test_binary_round_trip_audio_and_video() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    chunk = P.parse_binary(P.encode_audio(pcm))
    assert isinstance(chunk, P.AudioChunk)
    assert np.array_equal(np.frombuffer(chunk.pcm, "<i2"), pcm)
    frame = P.parse_binary(P.encode_video(1.25, b"\xff\xd8jpegdata"))
    assert isinstance(frame, P.VideoFrame) and frame.ts == 1.25 and frame.jpeg == b"\xff\xd8jpegdata"


def test_binary_errors_are_non_fatal_and_explain_the_layout() -> None:
    assert not expect("bad_message", b"", "empty").fatal
    assert not expect("bad_message", b"\x01\x00\x00\x00", "3 PCM bytes", "even").fatal
    assert not expect("bad_message", b"\x01", "0 PCM bytes").fatal
    assert not expect("bad_message", b"\x09abc", "0x09", "0x01").fatal
    assert not expect("bad_message", b"\x02" + b"\x00" * 8, "too short", "float64").fatal
    assert not expect("bad_message", struct.pack("<Bd", 2, float("nan")) + b"x", "finite").fatal
    assert not expect("bad_message", struct.pack("<Bd", 2, -1.0) + b"x", ">= 0").fatal


def test_jpeg_dimensions_read_from_header() -> None:
    cv2 = pytest.importorskip("cv2")
    img = np.zeros((48, 80, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    assert P.jpeg_dimensions(buf.tobytes()) == (80, 48)
    assert P.jpeg_dimensions(b"GIF89a....") is None
    assert P.jpeg_dimensions(buf.tobytes()[:20]) is None


# ------------------------------------------------------------ events


def test_emotion_event_validates_and_derives_label_and_present() -> None:
    event = emotion()
    E.validate_event(event)
    assert event["label"] == "joy" and event["present"] == ["text", "audio"] and event["status"] == "ok"
    assert event["modalities"]["text"]["label"] == "joy"
    interim = emotion(final=False)
    assert interim["type"] == "emotion_interim"
    E.validate_event(interim)


def test_failed_emotion_needs_an_error_and_may_have_no_label() -> None:
    mods = {m: E.modality_result(False) for m in MODALITIES}
    failed = emotion(probs=None, modalities=mods, error="fusion actor died")
    E.validate_event(failed)
    assert failed["status"] == "failed" and failed["label"] is None
    del failed["error"]
    with pytest.raises(ValueError, match="error"):
        E.validate_event(failed)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda e: e.pop("timing"), "timing"),
        (lambda e: e.__setitem__("probs", {"anger": 0.5, "joy": 0.7}), "probs"),
        (lambda e: e.__setitem__("label", "fear"), "label"),
        (lambda e: e.__setitem__("present", ["text"]), "present"),
        (lambda e: e.__setitem__("end", 0.5), "end"),
        (lambda e: e["modalities"].pop("video"), "video"),
        (lambda e: e["modalities"]["video"].__setitem__("present", True), "modalities.video"),
        (lambda e: e["modalities"]["audio"].__setitem__("probs", {"x": 1.0}), "modalities.audio"),
        (lambda e: e.__setitem__("seq", 0), "seq"),
        (lambda e: e.__setitem__("mood", "x"), "mood"),
        (lambda e: e["timing"]["stages_ms"].__setitem__("asr", -1), "timing"),
    ],
)
def test_broken_emotion_events_are_refused_naming_the_field(mutate, field) -> None:
    event = emotion()
    mutate(event)
    with pytest.raises(P.SchemaViolation) as info:
        E.validate_event(event)
    assert field in str(info.value)


def test_control_and_lifecycle_messages_validate() -> None:
    msgs = [
        {**E.make_session_start("s1", None, True, 44100, 1.7e9), "seq": 1},
        {**E.make_transcript("s1", 0, "hello", "A", 0.0, 1.0), "seq": 2},
        {**E.make_session_end("s1", "end", 3.0, 10, 1, 1.7e9), "seq": 3},
        E.control("gap", session="s1", from_seq=2, to_seq=9, reason="buffer"),
        E.control("dropped", reason="slow"),
        E.control("ended", session="s1", last_seq=3),
        E.control("pong", id=3),
        E.error_message(P.ProtocolError("bad_jpeg", "nope", fatal=False), "s1"),
    ]
    for msg in msgs:
        E.validate_event(msg)
    with pytest.raises(ValueError, match="reason"):
        E.validate_event({**msgs[2], "reason": "tired"})
    with pytest.raises(ValueError, match="type"):
        E.validate_event({"type": "nonsense"})
    with pytest.raises(ValueError, match="unknown error code"):
        P.ProtocolError("no_such_code", "x")


def test_event_json_is_compact_and_refuses_nan() -> None:
    event = emotion()
    assert json.loads(E.dumps(event)) == event
    bad = copy.deepcopy(event)
    bad["e2e"] = float("nan")
    with pytest.raises(ValueError):
        E.dumps(bad)


# ------------------------------------------------------------ resampling


def test_pcm16_to_float32_scales_and_refuses_odd_bytes() -> None:
    x = pcm16_to_float32(np.array([0, 16384, -32768], "<i2").tobytes())
    assert x.dtype == np.float32 and np.allclose(x, [0.0, 0.5, -1.0])
    with pytest.raises(P.ProtocolError) as info:
        pcm16_to_float32(b"\x00\x00\x00")
    assert info.value.code == "bad_message"


@pytest.mark.parametrize("backend", ["soxr", "scipy"])
@pytest.mark.parametrize("rate", [44100, 8000])
def test_stream_resampler_is_continuous_across_arbitrary_chunks(backend: str, rate: int) -> None:
    if backend == "soxr":
        pytest.importorskip("soxr")
    seconds = 0.5
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    whole = StreamResampler(rate, backend=backend)
    ref = np.concatenate([whole.process(pcm.tobytes()), whole.flush()])
    rng = np.random.default_rng(0)
    chunked = StreamResampler(rate, backend=backend)
    parts, i = [], 0
    while i < len(pcm):
        n = int(rng.integers(1, 700))
        parts.append(chunked.process(pcm[i : i + n].tobytes()))
        i += n
    parts.append(chunked.flush())
    out = np.concatenate(parts)
    assert abs(len(out) - seconds * 16000) <= 2
    assert len(out) == len(ref) and np.allclose(out, ref, atol=1e-5)
    ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out)) / 16000)
    assert np.max(np.abs(out[100:-100] - ideal[100:-100])) < 1e-3  # no delay, no clicks at chunk edges


def test_resampler_at_native_rate_is_a_plain_conversion() -> None:
    r = StreamResampler(16000)
    pcm = np.arange(-5, 5, dtype="<i2")
    assert np.array_equal(r.process(pcm.tobytes()), pcm.astype(np.float32) / 32768)
    assert r.flush().size == 0 and r.backend == "none"


def test_event_numbers_carry_their_documented_precision() -> None:
    third = {"anger": 1 / 3, "joy": 1 / 3 + 1e-9, "neutral": 1 / 3 - 1e-9}
    mods = {"text": E.modality_result(True, third), "audio": E.modality_result(False),
            "video": E.modality_result(False)}
    event = E.make_emotion("s", 0, probs=third, modalities=mods, start=1 / 7, end=2 / 7, speaker=None, text="x",
                           model="m", stages_ms={"asr": 100 / 3}, e2e_ms=1000 / 3)
    E.validate_event({**event, "seq": 2})
    assert event["probs"] == {"anger": 0.3333, "joy": 0.3333, "neutral": 0.3333}
    assert event["label"] == "joy"  # chosen before rounding
    assert (event["start"], event["end"]) == (0.143, 0.286)
    assert event["timing"] == {"stages_ms": {"asr": 33.3}, "e2e_ms": 333.3}
    assert event["modalities"]["text"]["probs"]["anger"] == 0.3333
    transcript = E.make_transcript("s", 0, "x", None, 1 / 7, 2 / 7)
    assert (transcript["start"], transcript["end"]) == (0.143, 0.286)
