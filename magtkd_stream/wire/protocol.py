"""Websocket protocol v1, the client side: message types, binary frame layout, error codes.

Transport-independent on purpose: the gateway, the tests, the demo clients and
the pipeline all build and check messages here, so the wire format has exactly
one definition (server events are built in events.py; the JSON Schemas are in magtkd_stream/wire/schemas/, documented in
docs/PROTOCOL.md).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

from magtkd_stream.wire.schema import SchemaViolation, check, short_json

PROTOCOL_VERSION = 1
# Rates a publisher may declare in its hello; audio not at SAMPLE_RATE is resampled to it.
SAMPLE_RATES: tuple[int, ...] = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)

# Binary publisher frames: first byte says what follows.
TAG_AUDIO = 0x01  # then PCM16 little-endian mono samples at the declared rate
TAG_VIDEO = 0x02  # then float64 LE media timestamp (s), then one JPEG image
_VIDEO_HEADER = struct.Struct("<Bd")

# Error code -> (close code when fatal, what it means); None: never fatal. Close codes 4xxx mirror HTTP statuses.
ERROR_CODES: dict[str, tuple[Optional[int], str]] = {
    "bad_json": (4400, "a text message is not valid JSON"),
    "unknown_type": (4400, "a text message has an unknown 'type'"),
    "bad_message": (4400, "a message breaks its schema or the binary layout; the text names the field"),
    "bad_version": (4426, "the hello asks for a protocol version the server does not speak"),
    "bad_token": (4401, "the token is not accepted"),
    "forbidden": (4403, "the token may not do this: another tenant's session, or a role the token lacks"),
    "too_many_hellos": (4429, "hellos from this remote address arrive faster than hello_rate_per_address"),
    "unknown_session": (4404, "resume asks for a session the server does not know (never existed, or expired)"),
    "session_taken": (4409, "the session id is in use by a live publisher, or already ran and ended"),
    "speaker_taken": (4409, "another live participant of the conversation already speaks under this name"),
    "too_many_sessions": (4429, "the token already has its maximum number of live publisher sessions"),
    "too_many_subscribers": (4429, "the token already has its maximum number of subscriber connections"),
    "oversized": (1009, "a message is larger than max_message_bytes"),
    "bad_sample_rate": (4422, "the declared sample rate is not one of the accepted rates"),
    "bad_jpeg": (None, "a video frame is not a decodable JPEG (frame dropped, session goes on)"),
    "rate_limited": (None, "video frames arrive faster than max_video_fps (frames dropped, session goes on)"),
    "after_end": (None, "audio or video sent after end (dropped)"),
    "idle_timeout": (4408, "no message for idle_timeout_s"),
    "not_publisher": (None, "a subscriber sent a message only publishers may send"),
    "internal": (4500, "the server or its pipeline failed on this session"),
}
CLOSE_DROPPED = 4503  # slow subscriber disconnected after a "dropped" message
CLOSE_SHUTDOWN = 1001  # server stopping

# Bounds on any client text message, checked before its schema: deeper or longer input is bad_message.
MAX_JSON_DEPTH = 8  # objects/arrays inside each other (protocol messages need 2)
MAX_STRING_CHARS = 1024  # any string or key; the schemas bound each field more tightly (token 512, speaker 128)

CLIENT_TYPES: tuple[str, ...] = ("hello", "end", "ping")
EVENT_TYPES: tuple[str, ...] = ("session_start", "transcript", "emotion", "emotion_interim", "session_end")
SESSION_END_REASONS: tuple[str, ...] = ("end", "disconnected", "idle_timeout", "error", "server_stopping")


class ProtocolError(Exception):
    """A client broke the protocol; `code` is one of ERROR_CODES, the message says what is accepted."""

    def __init__(self, code: str, message: str, fatal: bool = True) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; known: {sorted(ERROR_CODES)}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal

    @property
    def close_code(self) -> int:
        return ERROR_CODES[self.code][0] or 4400


# ---------------------------------------------------------------- client messages


@dataclass(frozen=True)
class PublisherHello:
    token: str
    session: str
    sample_rate: int
    speaker: Optional[str] = None
    video: bool = False
    conversation: Optional[str] = None  # join this conversation (one window with its other participants)
    speakers: tuple[str, ...] = ()  # names for the voices a diarizing server tells apart, in order of appearance


@dataclass(frozen=True)
class SubscriberHello:
    token: str
    session: Optional[str]  # a session id or "*"; None when subscribing to a conversation
    resume: Optional[dict[str, int]] = None  # session -> last seq received; None: live events only
    conversation: Optional[str] = None  # every session that joins this conversation

    @property
    def target(self) -> str:
        """What is subscribed to, for messages and logs: the session id, "*", or "conversation NAME"."""
        return self.session if self.session is not None else f"conversation {self.conversation}"


@dataclass(frozen=True)
class EndMessage:
    pass


@dataclass(frozen=True)
class PingMessage:
    id: Union[str, int, None] = None


ClientMessage = Union[PublisherHello, SubscriberHello, EndMessage, PingMessage]


@dataclass(frozen=True)
class AudioChunk:
    pcm: bytes  # PCM16 little-endian mono at the session's declared rate


@dataclass(frozen=True)
class VideoFrame:
    ts: float  # media time, seconds from the session start
    jpeg: bytes


def _schema_or_error(msg: Mapping[str, Any], file_name: str, what: str) -> None:
    try:
        check(msg, file_name)
    except SchemaViolation as exc:
        raise ProtocolError("bad_message", f"{what}: {exc}") from None


def parse_client_text(raw: Union[str, bytes]) -> ClientMessage:
    """Parse one client text message; raise ProtocolError(code, message) naming what is wrong."""
    try:
        msg = json.loads(raw)
    except RecursionError:
        raise ProtocolError(
            "bad_message", f"text message nests arrays/objects deeper than the limit of {MAX_JSON_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            "bad_json", f"text message is not valid JSON ({str(exc)[:200]}); send one JSON object per message"
        ) from None
    _check_bounds(msg, "", 1)
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"a message must be a JSON object, got {type(msg).__name__}")
    kind = msg.get("type")
    if "type" not in msg:
        raise ProtocolError("bad_message", f"missing field 'type'; accepted types: {list(CLIENT_TYPES)}")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {short_json(kind)}; accepted types: {list(CLIENT_TYPES)}"
        )
    if "version" in msg or kind == "hello":
        version = msg.get("version")
        if "version" not in msg:
            raise ProtocolError(
                "bad_message", f"hello: missing field 'version' (this server speaks {PROTOCOL_VERSION})"
            )
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            raise ProtocolError(
                "bad_version",
                f"protocol version {short_json(version)} is not supported; this server speaks {PROTOCOL_VERSION}",
            )
    if kind == "end":
        _schema_or_error(msg, "end.json", "end")
        return EndMessage()
    if kind == "ping":
        _schema_or_error(msg, "ping.json", "ping")
        return PingMessage(msg.get("id"))
    return _parse_hello(msg)


def _check_bounds(value: Any, where: str, depth: int) -> None:
    """Refuse nesting beyond MAX_JSON_DEPTH, strings beyond MAX_STRING_CHARS and text that is not valid Unicode.

    Runs before the schema so that no later step (schema checks, hmac, sending an echo) meets such input.
    """
    name = where or "<message>"
    if isinstance(value, (dict, list)):
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError(
                "bad_message", f"field '{name}' nests arrays/objects deeper than the limit of {MAX_JSON_DEPTH} levels"
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str):
                _check_text(key, f"key of {name}" if where else "key")
            _check_bounds(item, path[:80], depth + 1)
    elif isinstance(value, str):
        _check_text(value, name)


def _check_text(text: str, name: str) -> None:
    if len(text) > MAX_STRING_CHARS:
        raise ProtocolError(
            "bad_message",
            f"field '{name}' is {len(text)} characters long; strings are limited to {MAX_STRING_CHARS} characters",
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(
                "bad_message",
                f"field '{name}' is not valid Unicode (it contains a lone surrogate escape such as \\udcff); "
                "send UTF-8 text",
            ) from None


def _parse_hello(msg: dict[str, Any]) -> Union[PublisherHello, SubscriberHello]:
    role = msg.get("role")
    if role == "publisher":
        rate = msg.get("sample_rate")
        if isinstance(rate, int) and not isinstance(rate, bool) and rate not in SAMPLE_RATES:
            raise ProtocolError(
                "bad_sample_rate", f"sample_rate {rate} is not accepted; accepted rates (Hz): {list(SAMPLE_RATES)}"
            )
        _schema_or_error(msg, "hello_publisher.json", "hello")
        return PublisherHello(
            msg["token"], msg["session"], int(rate), msg.get("speaker"), bool(msg.get("video", False)),
            msg.get("conversation"), tuple(msg.get("speakers") or ()),
        )
    if role == "subscriber":
        if ("session" in msg) == ("conversation" in msg):
            raise ProtocolError("bad_message", "hello: a subscriber names exactly one of 'session' (an id or \"*\") "
                                               "and 'conversation'")
        if "conversation" in msg and "last_seq" in msg:  # before the schema, whose rule would not say why
            raise ProtocolError("bad_message", "hello: 'last_seq' needs a single session; with a conversation "
                                               "use 'resume'")
        _schema_or_error(msg, "hello_subscriber.json", "hello")
        if "conversation" in msg:
            return SubscriberHello(msg["token"], None, dict(msg["resume"]) if "resume" in msg else None,
                                   msg["conversation"])
        session = msg["session"]
        resume: Optional[dict[str, int]] = None
        if "last_seq" in msg:
            if session == "*":
                raise ProtocolError("bad_message", "hello: 'last_seq' needs a single session; with \"*\" use 'resume'")
            resume = {session: msg["last_seq"]}
        elif "resume" in msg:
            resume = dict(msg["resume"])
            others = sorted(set(resume) - {session}) if session != "*" else []
            if others:
                raise ProtocolError(
                    "bad_message",
                    f"hello: 'resume' names {others} but the subscription is for session {session!r} only",
                )
        return SubscriberHello(msg["token"], session, resume)
    raise ProtocolError(
        "bad_message", f'hello: field \'role\' must be "publisher" or "subscriber", got {short_json(role)}'
    )


def parse_binary(data: bytes) -> Union[AudioChunk, VideoFrame]:
    """Split one publisher binary message by its tag byte; raise ProtocolError on a bad layout."""
    if not data:
        raise ProtocolError(
            "bad_message", "empty binary message; expected tag 0x01 (audio) or 0x02 (video)", fatal=False
        )
    tag = data[0]
    if tag == TAG_AUDIO:
        pcm = bytes(data[1:])
        if not pcm or len(pcm) % 2:
            raise ProtocolError(
                "bad_message",
                f"audio frame has {len(pcm)} PCM bytes; expected a positive even count (PCM16 little-endian mono)",
                fatal=False,
            )
        return AudioChunk(pcm)
    if tag == TAG_VIDEO:
        if len(data) <= _VIDEO_HEADER.size:
            raise ProtocolError(
                "bad_message",
                f"video frame of {len(data)} bytes is too short; layout: 0x02, float64 LE timestamp (8 bytes), JPEG",
                fatal=False,
            )
        _, ts = _VIDEO_HEADER.unpack_from(data)
        if not math.isfinite(ts) or ts < 0:
            raise ProtocolError(
                "bad_message", f"video timestamp {ts} must be a finite number of seconds >= 0", fatal=False
            )
        return VideoFrame(ts, bytes(data[_VIDEO_HEADER.size :]))
    raise ProtocolError(
        "bad_message", f"binary tag 0x{tag:02x} is unknown; accepted: 0x01 (audio), 0x02 (video)", fatal=False
    )


def encode_audio(pcm16: Union[bytes, Any]) -> bytes:
    """Publisher audio frame from PCM16 LE bytes or an int16 numpy array."""
    raw = pcm16 if isinstance(pcm16, (bytes, bytearray)) else pcm16.astype("<i2").tobytes()
    return bytes([TAG_AUDIO]) + bytes(raw)


def encode_video(ts: float, jpeg: bytes) -> bytes:
    """Publisher video frame: media timestamp in seconds and one JPEG image."""
    return _VIDEO_HEADER.pack(TAG_VIDEO, float(ts)) + bytes(jpeg)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_dimensions(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a JPEG header without decoding it, or None if it is not a JPEG.

    Lets the gateway refuse absurd image sizes before a decoder allocates memory for them.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _SOF_MARKERS:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, i + 5)
            return (width, height) if width and height else None
        if length < 2:
            return None
        i += 2 + length
    return None
