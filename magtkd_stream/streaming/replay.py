"""Replaying a media file through a Recognizer as a live client would: print and record its events.

The file is decoded into what a live client would send (20 ms audio chunks,
timed BGR frames) and pushed into the same Recognizer the websocket gateway
uses, at real-time pace by default (so latencies are those a live user would
see) or as fast as the backend allows. Events come back over an in-process
EventBus subscription: each utterance prints one compact line, every event is
written as JSONL, and a summary closes the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from magtkd_stream.streaming.backend import Backend
from magtkd_stream.wire.bus import BusEvent, EventBus
from magtkd_stream.media import AudioChunk, Frame, decode, probe
from magtkd_stream.names import MODALITIES, SAMPLE_RATE
from magtkd_stream.wire.events import make_session_end, make_session_start
from magtkd_stream.streaming.recognizer import Recognizer
from magtkd_stream.streaming.vector_tap import VectorRecorder

PrintFn = Callable[[str], Any]


def session_name(path: Union[str, Path]) -> str:
    """A valid session id from a file name (1-64 of A-Z a-z 0-9 _ . -)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-.") or "file"
    return stem[:64]


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(0.0, seconds), 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


def _short(p: float) -> str:
    """Probability without the leading zero (".42"); "1.00" once it rounds up to one."""
    text = f"{p:.2f}"
    return text[1:] if text.startswith("0") else text


def format_event(event: Mapping[str, Any]) -> Optional[str]:
    """One readable line for an emotion event (None for other events)."""
    if event.get("type") != "emotion":
        return None
    head = f"[{_clock(event['start'])}-{_clock(event['end'])}] Speaker {event.get('speaker') or '?'}: \"{event.get('text', '')}\""
    latency = f"{event['timing']['e2e_ms']:.0f} ms"
    if event.get("status") == "failed":
        return f"{head}  FAILED ({event.get('error', 'unknown error')})  {latency}"
    parts = []
    for m in MODALITIES:
        entry = event["modalities"][m]
        if entry["present"]:
            parts.append(f"{m} {entry['label']} {_short(entry['probs'][entry['label']])}")
        else:
            parts.append(f"{m} \u2014")
    label = event["label"]
    return f"{head}  {label} {event['probs'][label]:.2f} ({' | '.join(parts)})  {latency}"


def _percentiles(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "max": round(float(arr.max()), 1)}


def summarize(events: list[Mapping[str, Any]], media_s: float, wall_s: float) -> dict[str, Any]:
    """Utterances, failures, emotion distribution, end-to-end and per-stage latency of a run's events."""
    emotions = [e for e in events if e.get("type") == "emotion"]
    ok = [e for e in emotions if e.get("status") == "ok"]
    stages: dict[str, list[float]] = {}
    for e in ok:
        for k, v in e["timing"]["stages_ms"].items():
            stages.setdefault(k, []).append(float(v))
    return {
        "utterances": len(emotions),
        "failed": len(emotions) - len(ok),
        "emotions": dict(Counter(e["label"] for e in ok).most_common()),
        "latency_ms": _percentiles([float(e["timing"]["e2e_ms"]) for e in ok]),
        "stages_ms": {k: _percentiles(v) for k, v in sorted(stages.items())},
        "media_s": round(media_s, 2),
        "wall_s": round(wall_s, 2),
        "model": ok[0]["model"] if ok else (emotions[0]["model"] if emotions else None),
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    lat = summary["latency_ms"]
    dist = ", ".join(f"{k} {v}" for k, v in summary["emotions"].items()) or "none"
    lines = [
        f"utterances: {summary['utterances']} ({summary['failed']} failed) in {summary['media_s']:.1f} s of media, "
        f"{summary['wall_s']:.1f} s wall",
        f"emotions: {dist}",
    ]
    if lat["p50"] is not None:
        lines.append(f"latency (end of speech -> event): p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, max {lat['max']:.0f} ms")
    if summary.get("events"):
        lines.append(f"events written to {summary['events']}")
    return "\n".join(lines)


async def replay(
    sink: Recognizer,
    path: Union[str, Path],
    session: str,
    speaker: Optional[str],
    fast: bool,
    max_fps: float = 10.0,
    counts: Optional[list] = None,
) -> None:
    """Push the file's audio and frames into `sink` for `session`; counts = [media seconds, frames] pushed."""
    info = probe(path, need_audio=True)
    await sink.open(session, speaker, info.has_video)
    loop = asyncio.get_running_loop()
    items = decode(path, video=info.has_video, max_fps=max_fps)
    batch_size = 25  # decoded items fetched per hop to the decoding thread
    t0 = loop.time()
    counts = counts if counts is not None else [0.0, 0]
    limit = sink.backend.stream.shed_video_after
    done = object()
    fetch = loop.run_in_executor(None, _take, items, batch_size, done)
    try:
        while True:
            batch = await fetch
            if not any(x is done for x in batch):  # decode the next items while these are paced out
                fetch = loop.run_in_executor(None, _take, items, batch_size, done)
            for item in batch:
                if item is done:
                    return
                when = item.end_s if isinstance(item, AudioChunk) else item.ts
                if not fast:
                    delay = t0 + when - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:  # as fast as the actors take it, without piling up utterances (which would shed video)
                    await sink.wait_in_flight(session, limit)
                if isinstance(item, AudioChunk):
                    await sink.audio(session, item.samples)
                    counts[0] = item.end_s
                elif isinstance(item, Frame):
                    await sink.video(session, item.ts, item.image)
                    counts[1] += 1
    finally:
        await asyncio.gather(fetch, return_exceptions=True)  # the generator may not be closed mid-step
        items.close()
        await sink.end(session)


PROGRESS_EVERY_S = 15.0  # a line this often while no utterance comes (a long silence, a slow start)


async def _progress(events: list[dict[str, Any]], duration_s: Optional[float], replayed: Callable[[], float],
                    print_fn: Optional[PrintFn], every_s: float = PROGRESS_EVERY_S) -> None:
    """Say how far the replay is whenever `every_s` pass without a new emotion line."""
    if print_fn is None:
        return
    seen = 0
    while True:
        await asyncio.sleep(every_s)
        done = sum(1 for e in events if e.get("type") == "emotion")
        if done == seen:
            total = f" of {_clock(duration_s)}" if duration_s else ""
            print_fn(f"... {_clock(replayed())}{total} replayed, {done} utterance(s) so far")
        seen = done


def _take(it: Any, n: int, done: object) -> list[Any]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            out.append(done)
            break
    return out


async def replay_file(
    backend: Backend,
    path: Union[str, Path],
    fast: bool = False,
    out_jsonl: Optional[Union[str, Path]] = None,
    print_fn: Optional[PrintFn] = print,
    session: Optional[str] = None,
    speaker: Optional[str] = "A",
    max_fps: float = 10.0,
    vectors_out: Optional[Union[str, Path]] = None,
    collect: Optional[list[dict[str, Any]]] = None,
) -> dict[str, Any]:
    """Replay one file through a running backend, one session; the run's summary (see actors.run_file.run_file).

    vectors_out: write the encoder vectors there; collect: the file's events are appended to it (for a report).
    """
    info = probe(path, need_audio=True)  # clear errors before anything starts
    session = session or session_name(path)
    bus = EventBus(subscriber_queue=1 << 16, replay_buffer=1 << 16)
    sub = bus.subscribe(session)
    recorder = VectorRecorder() if vectors_out is not None else None
    sink = Recognizer(backend, bus.publish, tap=recorder)
    events: list[dict[str, Any]] = []
    if out_jsonl:
        Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
    out = open(out_jsonl, "w", encoding="utf-8") if out_jsonl else None

    async def consume() -> None:
        while True:
            item = await sub.get()
            if not isinstance(item, BusEvent):
                continue
            events.append(item.data)
            if out is not None:
                out.write(item.text + "\n")
                out.flush()
            line = format_event(item.data)
            if line is not None and print_fn is not None:
                print_fn(line)
            if item.data["type"] == "session_end":
                return

    consumer = asyncio.create_task(consume())
    started = time.time()
    reason, counts = "end", [0.0, 0]
    progress = asyncio.create_task(_progress(events, info.duration, lambda: counts[0], print_fn))
    bus.start_session(session, make_session_start(session, speaker, info.has_video, SAMPLE_RATE, started))
    try:
        await replay(sink, path, session, speaker, fast, max_fps, counts)
    except BaseException:
        reason = "error"
        raise
    finally:
        bus.end_session(session, make_session_end(session, reason, counts[0], int(counts[1]), 0, time.time()))
        progress.cancel()
        await asyncio.wait_for(consumer, 10.0)
        sub.close()
        await sink.close()
        if out is not None:
            out.close()
    if collect is not None:
        collect.extend(events)
    summary = summarize(events, counts[0], time.time() - started)
    summary.update(file=str(path), session=session, events=str(out_jsonl) if out_jsonl else None)
    if recorder is not None and vectors_out is not None:
        sections = {m: dataclasses.asdict(getattr(backend.cfg.encoders, m)) for m in MODALITIES}
        summary["vectors"] = str(recorder.save(vectors_out, model=sink.model_id, encoders=sections))
    if print_fn is not None:
        print_fn(format_summary(summary))
    return summary


def unique_sessions(paths: Sequence[Union[str, Path]]) -> list[str]:
    """One session id per file, from its name; a repeated name gets -2, -3, ... so no two files share a session."""
    seen: Counter = Counter()
    out = []
    for p in paths:
        base = session_name(p)
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base[:60]}-{seen[base]}")
    return out
