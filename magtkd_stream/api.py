"""The Python API: load a profile, feed a file or live audio and frames, get the recognizer's events.

    import magtkd_stream

    with magtkd_stream.load("lite") as rec:
        for event in rec.run_file("talk.mp4", fast=True):
            if event["type"] == "emotion":
                print(event["speaker"], event["text"], event["label"])

A `RecognizerHandle` runs the models (an in-process LocalBackend unless a
started Backend is given, e.g. actors.pipeline.Pipeline for the Ray actors)
and a Recognizer on an event loop of its own thread, so callers stay
synchronous: `run_file` blocks until the file's events are in, and a
`LiveSession` takes audio and frames from any thread and hands events back
through a callback, `poll()` or `events()`. Events are the protocol's
dictionaries (docs/PROTOCOL.md), as a websocket subscriber receives them
(without the bus's `seq`): session_start, then transcript and emotion events,
then session_end.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from magtkd_stream.streaming.backend import Backend
from magtkd_stream.config import Config, load_config
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.wire.events import make_session_end, make_session_start

EventFn = Callable[[dict[str, Any]], Any]
END = "session_end"
START_TIMEOUT_S = 900.0  # a first load on a slow disk; a warm start takes seconds


class LiveSession:
    """One live session: feed float32 mono 16 kHz audio (any chunk size) and BGR frames; events come back.

    Every call returns once its input is taken (VAD runs as it is fed); the
    events of an utterance follow as soon as the models are done with it.
    """

    def __init__(self, handle: "RecognizerHandle", session: str, on_event: Optional[EventFn]) -> None:
        self._handle = handle
        self.session = session
        self._on_event = on_event
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.closed = False
        self._t0 = time.monotonic()
        self._audio_s = 0.0
        self._frames = 0

    def _deliver(self, event: Mapping[str, Any]) -> None:
        data = dict(event)
        self._queue.put(data)
        if self._on_event is not None:
            self._on_event(data)

    def feed_audio(self, samples: np.ndarray) -> None:
        """Audio as float32 in [-1, 1], mono, 16 kHz (magtkd_stream.wire.resample converts other rates)."""
        self._check_open()
        x = np.asarray(samples)
        if x.ndim != 1 or x.dtype.kind != "f":
            raise ValueError(f"audio must be a 1-D float array of mono 16 kHz samples; got shape {x.shape} "
                             f"dtype {x.dtype}")
        self._handle._call(self._handle.recognizer.audio(self.session, x.astype(np.float32, copy=False)))
        self._audio_s += x.size / SAMPLE_RATE

    def feed_frame(self, frame_bgr: np.ndarray, ts: Optional[float] = None) -> None:
        """A uint8 BGR (H, W, 3) frame at media time `ts` seconds (default: seconds since the session opened)."""
        self._check_open()
        f = np.asarray(frame_bgr)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"a frame must be uint8 BGR of shape (H, W, 3); got shape {f.shape} dtype {f.dtype}")
        when = time.monotonic() - self._t0 if ts is None else float(ts)
        self._handle._call(self._handle.recognizer.video(self.session, when, f))
        self._frames += 1

    def poll(self) -> list[dict[str, Any]]:
        """The events published since the last poll (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def events(self, timeout: Optional[float] = None) -> Iterator[dict[str, Any]]:
        """Events as they come, until the session ends (or `timeout` seconds pass without one)."""
        while True:
            try:
                event = self._queue.get(timeout=timeout)
            except queue.Empty:
                return
            yield event
            if event.get("type") == END:
                return

    def close(self) -> None:
        """End the session once the open utterance is recognised; its events stay for poll() / events()."""
        if not self.closed:
            self.closed = True
            try:
                self._handle._call(self._handle.recognizer.end(self.session))
            finally:
                self._handle._sessions.pop(self.session, None)
                self._deliver(make_session_end(self.session, "end", self._audio_s, self._frames, 0, time.time()))

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"live session {self.session!r} is closed")

    def __enter__(self) -> "LiveSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecognizerHandle:
    """The models and a Recognizer on a background event loop; a context manager that stops them on exit."""

    def __init__(self, cfg: Config, backend: Optional[Backend] = None) -> None:
        from magtkd_stream.streaming.recognizer import Recognizer

        self.cfg = cfg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="magtkd-recognizer", daemon=True)
        self._thread.start()
        self._owns_backend = backend is None
        self._sessions: dict[str, LiveSession] = {}
        try:
            self.backend: Any = backend or self._call(self._start_local(cfg), START_TIMEOUT_S)
            self.recognizer = Recognizer(self.backend, self._publish)
        except BaseException:
            self._stop_loop()
            raise
        self.closed = False

    @staticmethod
    async def _start_local(cfg: Config) -> Backend:
        from magtkd_stream.streaming.local_backend import LocalBackend

        return await LocalBackend.start(cfg)

    def _call(self, coro: Any, timeout: Optional[float] = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _publish(self, session: str, event: Mapping[str, Any]) -> None:
        live = self._sessions.get(session)
        if live is not None:
            live._deliver(event)

    @property
    def model(self) -> str:
        """The id of the checkpoint in use (every event's `model`)."""
        return self.backend.info.model

    @property
    def labels(self) -> tuple[str, ...]:
        return self.backend.info.labels

    def session(self, session: str = "live", speaker: Optional[str] = None, video: bool = False,
                on_event: Optional[EventFn] = None, conversation: Optional[str] = None) -> LiveSession:
        """Open a live session; `on_event(event)` is called on the recognizer's thread for every event.

        conversation: the session joins it as one participant (one context window with the other
        sessions that name it; give each its own `speaker`), as publishers do over the protocol.
        """
        if self.closed:
            raise RuntimeError("the recognizer is closed")
        if session in self._sessions:
            raise ValueError(f"session {session!r} is already open")
        live = LiveSession(self, session, on_event)
        self._sessions[session] = live
        now = time.time()
        try:
            self._call(self.recognizer.open(session, speaker, video, conversation))
        except BaseException:
            self._sessions.pop(session, None)
            raise
        offset = 0.0
        if conversation is not None:  # its clock starts when its first participant opened
            offset = max(0.0, now - self.recognizer.conversation_opened(conversation))
        live._deliver(make_session_start(session, speaker, video, SAMPLE_RATE, now, conversation, offset))
        return live

    def run_file(self, path: Union[str, Path], fast: bool = True, speaker: Optional[str] = "A",
                 out_jsonl: Optional[Union[str, Path]] = None,
                 print_fn: Optional[Callable[[str], Any]] = None) -> list[dict[str, Any]]:
        """Every event of one media file replayed as a live client would send it (`fast`: not real-time pace)."""
        from magtkd_stream.streaming.replay import replay_file

        if self.closed:
            raise RuntimeError("the recognizer is closed")
        events: list[dict[str, Any]] = []
        self._call(replay_file(self.backend, path, fast=fast, out_jsonl=out_jsonl, print_fn=print_fn,
                               speaker=speaker, collect=events))
        return events

    def run_files(self, paths: Sequence[Union[str, Path]], fast: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Events per file (keyed by path as given), one session each, in order."""
        return {str(p): self.run_file(p, fast=fast) for p in paths}

    def close(self) -> None:
        """End open sessions, stop the models this handle started, stop its thread."""
        if self.closed:
            return
        self.closed = True
        try:
            for live in list(self._sessions.values()):
                live.close()
            self._call(self.recognizer.close(), 60.0)
            if self._owns_backend:
                self.backend.stop()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "RecognizerHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(profile: Union[str, Path] = "lite", overrides: Sequence[str] = (), *,
         backend: Optional[Backend] = None) -> RecognizerHandle:
    """Load a profile (a name in configs/ or a YAML path, with `key=value` overrides) and start its models.

    `backend`: a started Backend to use instead (e.g. a Ray `actors.pipeline.Pipeline`); the caller stops it.
    """
    cfg = load_config(profile, overrides)
    return RecognizerHandle(cfg, backend)
