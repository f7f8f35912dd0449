"""What the live client sends and how it reads what comes back (protocol v1), without any device or socket.

Kept free of I/O so tests can check every message the client would put on the
wire against magtkd_stream.wire.protocol, and so the browser page and this client
stay two readings of one protocol rather than two inventions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from magtkd_stream.wire import events
from magtkd_stream.wire import protocol
from magtkd_stream.names import SAMPLE_RATE

JPEG_QUALITY = 80
MAX_VIDEO_WIDTH = 640  # frames are scaled down to this width before JPEG encoding


def publisher_hello(
    token: str, session: str, sample_rate: int = SAMPLE_RATE, *, speaker: Optional[str] = None,
    video: bool = False, conversation: Optional[str] = None,
) -> str:
    """The first message of the publishing connection (JSON text); `conversation`: join it as a participant."""
    msg: dict[str, Any] = {"type": "hello", "version": protocol.PROTOCOL_VERSION, "token": token,
                           "role": "publisher", "session": session, "sample_rate": int(sample_rate), "video": bool(video)}
    if speaker:
        msg["speaker"] = speaker
    if conversation:
        msg["conversation"] = conversation
    return events.dumps(msg)


def subscriber_hello(token: str, session: str, last_seq: Optional[int] = None,
                     conversation: Optional[str] = None) -> str:
    """The first message of the subscribing connection; last_seq replays the events after it.

    With `conversation`, it follows every participant of that conversation instead of `session` alone.
    """
    msg: dict[str, Any] = {"type": "hello", "version": protocol.PROTOCOL_VERSION, "token": token,
                           "role": "subscriber"}
    if conversation:
        msg["conversation"] = conversation
    else:
        msg["session"] = session
        if last_seq is not None:
            msg["last_seq"] = int(last_seq)
    return events.dumps(msg)


def end_message() -> str:
    return events.dumps({"type": "end", "version": protocol.PROTOCOL_VERSION})


def check_hello(text: str) -> None:
    """Raise protocol.ProtocolError if the server would refuse this hello (checked before connecting)."""
    protocol.parse_client_text(text)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 samples from int16 or float samples in [-1, 1] (clipped)."""
    if samples.dtype == np.int16:
        return samples
    return np.round(np.clip(samples.astype(np.float32), -1.0, 32767 / 32768) * 32768).astype(np.int16)


class AudioFramer:
    """Cuts a PCM16 stream of any chunk sizes into tagged audio messages of exactly `frame_samples`."""

    def __init__(self, frame_samples: int) -> None:
        if frame_samples < 1:
            raise ValueError(f"frame_samples must be >= 1, got {frame_samples}")
        self.frame_samples = frame_samples
        self._rest = np.zeros(0, np.int16)

    def push(self, samples: np.ndarray) -> Iterator[bytes]:
        data = np.concatenate([self._rest, to_pcm16(np.asarray(samples).reshape(-1))])
        full = len(data) - len(data) % self.frame_samples
        for i in range(0, full, self.frame_samples):
            yield protocol.encode_audio(data[i : i + self.frame_samples])
        self._rest = data[full:]

    def flush(self) -> Iterator[bytes]:
        if len(self._rest):
            yield protocol.encode_audio(self._rest)
        self._rest = np.zeros(0, np.int16)


def encode_jpeg(frame_bgr: np.ndarray, quality: int = JPEG_QUALITY, max_width: int = MAX_VIDEO_WIDTH) -> bytes:
    """JPEG bytes of a BGR frame, scaled down to max_width first when wider."""
    import cv2

    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) BGR frame, got {frame_bgr.dtype} {frame_bgr.shape}")
    h, w = frame_bgr.shape[:2]
    if w > max_width:
        frame_bgr = cv2.resize(frame_bgr, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", frame_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the frame")
    return buf.tobytes()


def video_message(ts: float, frame_bgr: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A tagged video message: media time in seconds and the frame as JPEG."""
    return protocol.encode_video(max(0.0, float(ts)), encode_jpeg(frame_bgr, quality))


@dataclass
class EventView:
    """What the overlay shows: the latest emotion of the session and a short transcript history."""

    session: str = ""
    label: Optional[str] = None
    probs: dict[str, float] = field(default_factory=dict)
    modalities: dict[str, Optional[str]] = field(default_factory=dict)  # modality -> its label (None: absent)
    text: str = ""
    speaker: Optional[str] = None
    utterance: Optional[int] = None
    interim: bool = False
    e2e_ms: Optional[float] = None
    transcript: list[str] = field(default_factory=list)
    speakers: dict[str, str] = field(default_factory=dict)  # speaker -> their latest final label, in order of appearance
    status: str = "connecting"
    last_seq: int = 0
    max_lines: int = 3

    def update(self, msg: Mapping[str, Any]) -> bool:
        """Fold one server message into the view; True when what is shown changed."""
        kind = msg.get("type")
        if isinstance(msg.get("seq"), int):
            self.last_seq = max(self.last_seq, msg["seq"])
        if kind in ("emotion", "emotion_interim"):
            if kind == "emotion_interim" and self.utterance is not None and msg.get("utterance") == self.utterance \
                    and not self.interim:
                return False  # a late interim never replaces its utterance's final result
            self.label = msg.get("label")
            self.probs = dict(msg.get("probs") or {})
            self.modalities = {m: (v or {}).get("label") for m, v in (msg.get("modalities") or {}).items()}
            self.text, self.speaker = msg.get("text", ""), msg.get("speaker")
            self.utterance, self.interim = msg.get("utterance"), kind == "emotion_interim"
            self.e2e_ms = ((msg.get("timing") or {}).get("e2e_ms"))
            if msg.get("status") == "failed":
                self.status = f"utterance {(self.utterance or 0) + 1} failed: {msg.get('error', 'unknown error')}"
            elif kind == "emotion" and self.label:
                self.speakers[self.speaker or msg.get("session", "?")] = self.label
            return True
        if kind == "transcript":
            who = f"{msg['speaker']}: " if msg.get("speaker") else ""
            self.transcript = (self.transcript + [who + msg.get("text", "")])[-self.max_lines :]
            return True
        if kind == "session_start":
            self.session, self.status = msg.get("session", ""), "live"
            return True
        if kind == "session_end":
            self.status = f"session ended ({msg.get('reason')})"
            return True
        if kind == "welcome":
            self.status = "waiting for the session" if msg.get("role") == "subscriber" else self.status
            return True
        if kind == "error":
            self.status = f"error {msg.get('code')}: {msg.get('message')}"
            return True
        return False


def describe(msg: Mapping[str, Any]) -> Optional[str]:
    """One console line for an event worth printing, else None."""
    kind = msg.get("type")
    if kind == "emotion":
        probs = msg.get("probs") or {}
        top = f"{msg.get('label')} {probs.get(msg.get('label'), 0.0):.2f}" if msg.get("label") else "failed"
        per = " ".join(f"{m}={v.get('label')}" for m, v in (msg.get("modalities") or {}).items() if v.get("present"))
        who = msg.get("speaker") or "?"
        return (f"[{msg.get('start', 0):6.2f}-{msg.get('end', 0):6.2f}] #{msg.get('utterance')} {who}: "
                f"{top} ({per}) {json.dumps(msg.get('text', ''), ensure_ascii=False)}")
    if kind == "session_end":
        return (f"session {msg.get('session')} ended ({msg.get('reason')}): {msg.get('audio_seconds', 0):.1f} s audio, "
                f"{msg.get('video_frames', 0)} video frames, {msg.get('video_dropped', 0)} dropped")
    if kind == "error":
        return f"server error {msg.get('code')}{' (fatal)' if msg.get('fatal') else ''}: {msg.get('message')}"
    return None
