"""Server messages of protocol v1: event builders, their validation, and the wire encoding.

Every event the service sends is built here, so the rounding of numbers, the
modality order and the cross-field rules a JSON Schema cannot say live in one
place; the client side (hellos, binary frames, error codes) is protocol.py.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from magtkd_stream.names import MODALITIES
from magtkd_stream.wire.protocol import EVENT_TYPES, PROTOCOL_VERSION, ProtocolError
from magtkd_stream.wire.schema import SchemaViolation, check_server_message


def control(kind: str, **fields: Any) -> dict[str, Any]:
    """A non-sequenced server message (welcome, error, gap, dropped, ended, pong)."""
    return {"type": kind, "version": PROTOCOL_VERSION, **fields}


def error_message(exc: ProtocolError, session: Optional[str] = None) -> dict[str, Any]:
    msg = control("error", code=exc.code, message=exc.message, fatal=exc.fatal)
    if session is not None:
        msg["session"] = session
    return msg


def make_event(kind: str, session: str, **fields: Any) -> dict[str, Any]:
    """A sequenced event without its seq (the event bus assigns it on publish)."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; known: {list(EVENT_TYPES)}")
    return {"type": kind, "version": PROTOCOL_VERSION, "session": session, **fields}


# Precision of the numbers in events (what the models can tell apart; 17-digit floats only cost bytes):
PROB_DECIMALS = 4  # probabilities
TIME_DECIMALS = 3  # media times in seconds (1 ms)
MS_DECIMALS = 1  # latencies in milliseconds


def _probs(probs: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(v), PROB_DECIMALS) for k, v in probs.items()}


def _in_conversation(fields: dict[str, Any], conversation: Optional[str]) -> dict[str, Any]:
    """The fields with `conversation` added when the session is a participant of one (v1 sessions: absent)."""
    if conversation is not None:
        fields["conversation"] = conversation
    return fields


def make_transcript(
    session: str, utterance: int, text: str, speaker: Optional[str], start: float, end: float,
    conversation: Optional[str] = None,
) -> dict[str, Any]:
    return make_event("transcript", session, **_in_conversation(dict(
        utterance=utterance, text=text, speaker=speaker,
        start=round(float(start), TIME_DECIMALS), end=round(float(end), TIME_DECIMALS),
    ), conversation))


def modality_result(
    present: bool, probs: Optional[Mapping[str, float]] = None, label: Optional[str] = None
) -> dict[str, Any]:
    """One modality's entry in an emotion event; label defaults to the argmax of probs.

    A modality without probabilities is reported absent: present=True with probs=None would break the schema.
    """
    if not present or probs is None:
        return {"present": bool(present), "label": None, "probs": None}
    p = {k: float(v) for k, v in probs.items()}
    return {"present": True, "label": label or max(p, key=p.__getitem__), "probs": _probs(p)}


def make_emotion(
    session: str,
    utterance: int,
    *,
    probs: Optional[Mapping[str, float]],
    modalities: Mapping[str, Mapping[str, Any]],
    start: float,
    end: float,
    speaker: Optional[str],
    text: str,
    model: str,
    stages_ms: Mapping[str, float],
    e2e_ms: float,
    final: bool = True,
    label: Optional[str] = None,
    error: Optional[str] = None,
    conversation: Optional[str] = None,
) -> dict[str, Any]:
    """An emotion (final) or emotion_interim event; status is "failed" when error is given."""
    fused = None if probs is None else {k: float(v) for k, v in probs.items()}
    fields: dict[str, Any] = dict(
        utterance=utterance,
        final=final,
        label=label if label is not None else (max(fused, key=fused.__getitem__) if fused else None),
        probs=None if fused is None else _probs(fused),
        modalities={m: dict(modalities[m]) for m in MODALITIES if m in modalities},
        present=[m for m in MODALITIES if modalities.get(m, {}).get("present")],
        start=round(float(start), TIME_DECIMALS),
        end=round(float(end), TIME_DECIMALS),
        speaker=speaker,
        text=text,
        model=model,
        timing={"stages_ms": {k: round(float(v), MS_DECIMALS) for k, v in stages_ms.items()},
                "e2e_ms": round(float(e2e_ms), MS_DECIMALS)},
        status="failed" if error else "ok",
    )
    if error:
        fields["error"] = error
    return make_event("emotion" if final else "emotion_interim", session, **_in_conversation(fields, conversation))


def make_session_start(
    session: str, speaker: Optional[str], video: bool, sample_rate: int, started_at: float,
    conversation: Optional[str] = None, offset: float = 0.0,
) -> dict[str, Any]:
    """offset: where this participant's media time 0 lies on its conversation's clock (seconds)."""
    fields = _in_conversation(dict(speaker=speaker, video=video, sample_rate=sample_rate, started_at=started_at),
                              conversation)
    if conversation is not None:
        fields["offset"] = round(float(offset), TIME_DECIMALS)
    return make_event("session_start", session, **fields)


def make_session_end(
    session: str, reason: str, audio_seconds: float, video_frames: int, video_dropped: int, ended_at: float
) -> dict[str, Any]:
    return make_event(
        "session_end",
        session,
        reason=reason,
        audio_seconds=round(float(audio_seconds), TIME_DECIMALS),
        video_frames=int(video_frames),
        video_dropped=int(video_dropped),
        ended_at=ended_at,
    )


def _probs_sum_ok(probs: Mapping[str, float], where: str) -> None:
    total = sum(probs.values())
    if abs(total - 1.0) > 1e-3:
        raise SchemaViolation(f"field '{where}' must sum to 1, sums to {total:.6f}", where)


def _check_emotion(event: Mapping[str, Any]) -> None:
    """Rules a JSON Schema cannot say: consistent labels, modalities and times."""
    if event["end"] < event["start"]:
        raise SchemaViolation(f"field 'end' ({event['end']}) must be >= 'start' ({event['start']})", "end")
    probs = event["probs"]
    for m in MODALITIES:
        entry = event["modalities"][m]
        where = f"modalities.{m}"
        if entry["present"] != (entry["probs"] is not None) or (entry["probs"] is None) != (entry["label"] is None):
            raise SchemaViolation(f"field '{where}': label and probs are given exactly when present is true", where)
        if entry["probs"] is not None:
            _probs_sum_ok(entry["probs"], f"{where}.probs")
            if probs is not None and set(entry["probs"]) != set(probs):
                raise SchemaViolation(f"field '{where}.probs' must use the fused labels {sorted(probs)}", where)
            if entry["label"] not in entry["probs"]:
                raise SchemaViolation(f"field '{where}.label' is not a key of its probs", where)
    present = [m for m in MODALITIES if event["modalities"][m]["present"]]
    if list(event["present"]) != present:
        raise SchemaViolation(
            f"field 'present' must list the modalities whose 'present' is true, in order: {present}, "
            f"got {event['present']}",
            "present",
        )
    if probs is not None:
        _probs_sum_ok(probs, "probs")
        if event["label"] not in probs:
            raise SchemaViolation(f"field 'label' {event['label']!r} is not a key of 'probs' {sorted(probs)}", "label")


def validate_event(event: Mapping[str, Any]) -> None:
    """Check any server message against its JSON Schema (and emotion events' cross-field rules).

    Raises SchemaViolation (a ValueError) naming the field and what is accepted.
    """
    check_server_message(event)
    if event["type"] in ("emotion", "emotion_interim"):
        _check_emotion(event)
    if event["type"] == "transcript" and event["end"] < event["start"]:
        raise SchemaViolation(f"field 'end' ({event['end']}) must be >= 'start' ({event['start']})", "end")


def dumps(message: Mapping[str, Any]) -> str:
    """Compact JSON as sent on the wire."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
