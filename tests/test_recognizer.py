"""The Recognizer's per-session algorithm over a fake Backend: ordering, failures, shedding, interims, sessions.

The backend here is a test double whose calls take scripted delays, wait on
gates the test opens, fail on cue and are recorded, so the properties the
recognizer promises (publish order, causal fusion, one failure costs one
utterance, overload sheds video, interims never push) are checked without
models. Speech is real (espeak-ng) and cut by the real Silero VAD.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("onnxruntime")

from magtkd_stream.streaming.asr import ASRResult  # noqa: E402
from magtkd_stream.streaming.backend import Backend, BackendError, BackendInfo, Vectors  # noqa: E402
from magtkd_stream.wire.bus import EventBus  # noqa: E402
from magtkd_stream.config import load_config  # noqa: E402
from magtkd_stream.encoders.base import AudioInput, TextInput, VideoInput  # noqa: E402
from magtkd_stream.labels import label_set  # noqa: E402
from magtkd_stream.names import MODALITIES  # noqa: E402
from magtkd_stream.wire.events import make_session_start  # noqa: E402
from magtkd_stream.streaming.recognizer import Recognizer  # noqa: E402
from magtkd_stream.config import DiarizeConfig, StreamConfig  # noqa: E402
from speech import synth_speech  # noqa: E402

SR = 16000
CHUNK = SR // 10  # 0.1 s of audio per push, one frame per push when the session has video
FIRST = "Hello, my name is John and I like to eat pizza."
SECOND = "The weather is very nice today in London."
THIRD = "I cannot believe you did that to me."
LONG = "Honestly I was not expecting any of this, and now I really do not know what to say about it."
CFG = load_config("tiny")
LABELS = label_set(CFG.labels)
DIMS = {"text": 6, "audio": 5, "video": 4}
MODEL = "fake-model"
TOP = "joy"  # the label every fake prediction favours
FRAME = np.full((8, 8, 3), 128, np.uint8)
TIMEOUT_S = 20.0  # per test: a recognizer that deadlocks fails instead of hanging the run
PROTOCOL_METHODS = ("has", "transcribe", "encode", "crop", "fuse", "peek", "end_session")


# ---------------------------------------------------------------- the fake backend


@dataclass
class Call:
    """One backend call as the fake received it; `n` counts calls of the same name from 0."""

    name: str  # transcribe, encode:text, encode:audio, encode:video, crop, fuse, peek, end_session
    n: int
    session: Optional[str] = None
    speaker: Optional[str] = None
    items: Sequence[Any] = ()
    vectors: Mapping[str, Optional[np.ndarray]] = field(default_factory=dict)
    done: bool = False

    @property
    def code(self) -> Optional[int]:
        """Which transcribe call the fused text came from (the fake's text vectors carry it); None: no text."""
        text = self.vectors.get("text")
        return None if text is None else int(text[0])


class FakeBackend:
    """A Backend whose calls sleep `delays`, wait on `gates`, raise `failures` (keyed by (name, n)) and are logged.

    Transcribe call n returns the text f"line {n}", so a transcript names the call
    that made it; text vectors are filled with that n, so fuse() calls say which
    utterance they push. Every prediction favours TOP.
    """

    def __init__(self, stream: Optional[StreamConfig] = None, *, audio_from_asr: bool = False,
                 default_delay: float = 0.002) -> None:
        self.cfg = CFG
        self.stream = stream or CFG.stream
        self.info = BackendInfo(model=MODEL, labels=LABELS, window=4, trained=False, audio_from_asr=audio_from_asr,
                                encoder_dims=dict(DIMS), crop_on_arrival=False)
        self.default_delay = default_delay
        self.delays: dict[tuple[str, int], float] = {}
        self.gates: dict[tuple[str, int], asyncio.Event] = {}
        self.failures: dict[tuple[str, int], Exception] = {}
        self.calls: list[Call] = []  # in arrival order
        self.finished: list[Call] = []  # in completion order

    def gate(self, name: str, n: int) -> asyncio.Event:
        """An event call (name, n) waits for before it proceeds."""
        return self.gates.setdefault((name, n), asyncio.Event())

    def open_gates(self) -> None:
        for gate in self.gates.values():
            gate.set()

    def of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def index_of(self, name: str, session: str) -> int:
        return next(i for i, c in enumerate(self.calls) if c.name == name and c.session == session)

    async def _serve(self, name: str, **fields: Any) -> Call:
        call = Call(name, len(self.of(name)), **fields)
        self.calls.append(call)
        key = (name, call.n)
        if key in self.gates:
            await self.gates[key].wait()
        await asyncio.sleep(self.delays.get(key, self.default_delay))
        call.done = True
        self.finished.append(call)
        if key in self.failures:
            raise self.failures[key]
        return call

    def has(self, kind: str) -> bool:
        return kind in ("asr", "text", "video", "fusion") or (kind == "audio" and not self.info.audio_from_asr)

    async def transcribe(self, audio: np.ndarray) -> ASRResult:
        call = await self._serve("transcribe", items=(audio,))
        vector = np.full(DIMS["audio"], call.n, np.float32) if self.info.audio_from_asr else None
        return ASRResult(text=f"line {call.n}", audio_vector=vector, present=True)

    async def encode(self, modality: str, items: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        await self._serve(f"encode:{modality}", items=list(items))
        vectors = np.ones((len(items), DIMS[modality]), np.float32)
        if modality == "text":
            present = np.array([bool(i.text.strip()) for i in items])
            for row, item in zip(vectors, items):
                row[:] = int(item.text.split()[-1])
        elif modality == "video":
            present = np.array([len(i.frames) > 0 for i in items])
        else:
            present = np.ones(len(items), bool)
        return vectors, present

    async def crop(self, frame: np.ndarray, session: str) -> Optional[np.ndarray]:
        await self._serve("crop", session=session, items=(frame,))
        return frame

    def _prediction(self, vectors: Vectors) -> dict[str, Any]:
        probs = {label: 0.4 / (len(LABELS) - 1) for label in LABELS}
        probs[TOP] = 0.6
        return {"probs": probs, "modalities": {m: dict(probs) if vectors.get(m) is not None else None
                                               for m in MODALITIES}}

    async def fuse(self, session: str, speaker: str, vectors: Vectors) -> dict[str, Any]:
        await self._serve("fuse", session=session, speaker=speaker, vectors=dict(vectors))
        return self._prediction(vectors)

    async def peek(self, session: str, speaker: str, vectors: Vectors) -> dict[str, Any]:
        await self._serve("peek", session=session, speaker=speaker, vectors=dict(vectors))
        return self._prediction(vectors)

    async def end_session(self, session: str) -> None:
        await self._serve("end_session", session=session)


# ---------------------------------------------------------------- helpers


class Collector:
    """Published events, through a validating EventBus; an event the schema refuses is kept in `errors`.

    The recognizer logs and swallows a failing publish, so without `errors` a
    malformed event would only show up as a missing one.
    """

    def __init__(self, *sessions: str) -> None:
        self.bus = EventBus(validate=True)
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.hooks: list[Callable[[dict[str, Any]], None]] = []
        for s in sessions:
            self.bus.start_session(s, make_session_start(s, None, False, SR, time.time()))

    def publish(self, session: str, event: Mapping[str, Any]) -> int:
        try:
            seq = self.bus.publish(session, event)
        except Exception as exc:
            self.errors.append(f"{event.get('type')} {event.get('utterance')}: {exc}")
            raise
        data = {**event, "seq": seq}
        self.events.append(data)
        for hook in self.hooks:
            hook(data)
        return seq

    def of(self, session: str, kind: Optional[str] = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["session"] == session and (kind is None or e["type"] == kind)]

    def kinds(self, session: str) -> list[tuple[str, int]]:
        return [(e["type"], e["utterance"]) for e in self.of(session)]


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


async def until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def conversation(*sentences: str, lead: float = 0.5) -> np.ndarray:
    """Each sentence followed by 1 s of silence, enough for the VAD to cut it."""
    parts = [silence(lead)]
    for s in sentences:
        parts += [synth_speech(s), silence(1.0)]
    return np.concatenate(parts)


async def push(rec: Recognizer, session: str, audio: np.ndarray, *, video: bool = False,
               settle: Optional[Callable[[], Awaitable[None]]] = None) -> None:
    """Audio in 0.1 s chunks, each preceded by a frame of the same media time when `video`, as a camera sends them."""
    t0 = rec.sessions[session].core.samples / SR
    for i in range(0, audio.size, CHUNK):
        if video:
            await rec.video(session, t0 + i / SR, FRAME)
        await rec.audio(session, audio[i : i + CHUNK])
        if settle is not None:
            await settle()


def recognizer(fake: FakeBackend, col: Collector) -> Recognizer:
    return Recognizer(fake, col.publish, vad_threads=1)


async def shut(rec: Recognizer, fake: FakeBackend) -> None:
    """Close the recognizer; gates open first, so a failed assertion fails fast instead of waiting on them."""
    fake.open_gates()
    await rec.close()


def text_items(fake: FakeBackend) -> dict[str, TextInput]:
    """The text encoder's inputs by transcript."""
    return {item.text: item for call in fake.of("encode:text") for item in call.items}


# ---------------------------------------------------------------- tests


def test_slow_first_asr_still_publishes_and_fuses_in_utterance_order() -> None:
    """Utterances overlap in flight, but events and fusion follow speech order, and prompts see earlier lines."""
    fake, col = FakeBackend(), Collector("s")
    slow_asr = fake.gate("transcribe", 0)

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("s", "Ann", False)
            await push(rec, "s", conversation(FIRST, SECOND, THIRD))
            await until(lambda: len([c for c in fake.of("transcribe") if c.done]) == 2, "ASR of utterances 1 and 2")
            await asyncio.sleep(0.05)
            assert rec.in_flight("s") == 3
            assert col.events == [] and fake.of("fuse") == [], "nothing may overtake utterance 0"
            slow_asr.set()
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    assert [c.n for c in fake.finished if c.name == "transcribe"] == [1, 2, 0]  # ASR finished out of order
    assert col.kinds("s") == [("transcript", 0), ("emotion", 0), ("transcript", 1), ("emotion", 1),
                              ("transcript", 2), ("emotion", 2)]
    assert [c.code for c in fake.of("fuse")] == [0, 1, 2], "fusion sees utterances in speech order"
    assert [e["text"] for e in col.of("s", "transcript")] == ["line 0", "line 1", "line 2"]
    items = text_items(fake)
    assert list(items["line 0"].context) == []
    assert list(items["line 1"].context) == [("Ann", "line 0")]
    assert list(items["line 2"].context) == [("Ann", "line 0"), ("Ann", "line 1")]
    emotions = col.of("s", "emotion")
    assert [e["seq"] for e in col.of("s")] == list(range(2, 8))  # seq 1 is the session_start
    for e in emotions:
        assert e["status"] == "ok" and e["final"] is True and e["label"] == TOP
        assert e["speaker"] == "Ann" and e["model"] == MODEL
        assert e["present"] == ["text", "audio"]  # no frames were sent
        assert e["modalities"]["video"] == {"present": False, "label": None, "probs": None}
        assert {"vad_wait", "asr", "text", "audio", "fusion"} <= set(e["timing"]["stages_ms"])
    assert emotions[0]["end"] <= emotions[1]["start"] and emotions[1]["end"] <= emotions[2]["start"]
    assert len(fake.of("encode:audio")) == 3 and fake.of("encode:video") == []
    for asr, enc in zip(fake.of("transcribe"), fake.of("encode:audio")):  # both see the same utterance audio
        (item,) = enc.items
        assert isinstance(item, AudioInput) and np.array_equal(item.waveform, asr.items[0])
    assert [c.session for c in fake.of("end_session")] == ["s"]


def test_the_next_prompt_is_encoded_while_the_previous_utterance_still_fuses() -> None:
    """Context needs only earlier transcripts, so utterance 1's text encoding overlaps utterance 0's fusion."""
    fake, col = FakeBackend(), Collector("s")
    slow_fusion = fake.gate("fuse", 0)

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("s", "Ann", False)
            await push(rec, "s", conversation(FIRST, SECOND))
            await until(lambda: len([c for c in fake.of("encode:text") if c.done]) == 2, "utterance 1's prompt")
            assert col.kinds("s") == [("transcript", 0)], "utterance 1 publishes only after emotion 0"
            assert list(text_items(fake)["line 1"].context) == [("Ann", "line 0")]
            slow_fusion.set()
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    assert col.kinds("s") == [("transcript", 0), ("emotion", 0), ("transcript", 1), ("emotion", 1)]
    assert [c.code for c in fake.of("fuse")] == [0, 1]


@pytest.mark.parametrize(
    ("call", "error", "expected"),
    [
        ("transcribe", BackendError("asr#0 died"), "asr: asr#0 died"),
        ("encode:text", BackendError("text#0 died"), "text: text#0 died"),
        ("encode:audio", BackendError("audio#0 timed out"), "audio: audio#0 timed out"),
        ("encode:video", BackendError("video#0 died"), "video: video#0 died"),
        ("fuse", BackendError("fusion#0 restarted"), "fusion: fusion#0 restarted"),
        ("fuse", RuntimeError("in the kernel\nout of memory"), "fusion: RuntimeError: out of memory"),
    ],
)
def test_a_failed_call_fails_only_its_utterance(call: str, error: Exception, expected: str) -> None:
    """Utterance 0's call fails: its emotion says which stage, utterance 1 is fine and nothing failed is fused."""
    fake, col = FakeBackend(), Collector("s")
    fake.failures[(call, 0)] = error
    stats: dict[str, Any] = {}

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("s", "Ann", True)
            await push(rec, "s", conversation(FIRST, SECOND), video=True)
            await until(lambda: len(col.of("s", "emotion")) == 2 and rec.in_flight("s") == 0, "both emotions")
            stats.update(rec.stats())
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    failed, ok = col.of("s", "emotion")
    assert (failed["utterance"], failed["status"], failed["error"]) == (0, "failed", expected)
    assert failed["probs"] is None and failed["label"] is None and failed["present"] == []
    assert all(failed["modalities"][m] == {"present": False, "label": None, "probs": None} for m in MODALITIES)
    assert (ok["utterance"], ok["status"], ok["label"]) == (1, "ok", TOP) and "error" not in ok
    assert ok["present"] == ["text", "audio", "video"]
    assert stats == {"s": {"utterances": 2, "failed": 1, "in_flight": 0}}
    if call == "transcribe":  # no transcript to publish, and none to give utterance 1 as context
        assert col.kinds("s") == [("emotion", 0), ("transcript", 1), ("emotion", 1)]
        assert failed["text"] == "" and list(text_items(fake)["line 1"].context) == []
    else:
        assert col.kinds("s") == [("transcript", 0), ("emotion", 0), ("transcript", 1), ("emotion", 1)]
        assert failed["text"] == "line 0" and list(text_items(fake)["line 1"].context) == [("Ann", "line 0")]
    fused = [c.code for c in fake.of("fuse")]
    assert fused == ([0, 1] if call == "fuse" else [1]), "an utterance that failed before fusion never enters it"
    assert [c.session for c in fake.of("end_session")] == ["s"]


def test_an_utterance_cut_while_another_is_in_flight_goes_without_video() -> None:
    """With shed_video_after=1 the second utterance skips the video encoder; once idle, video comes back."""
    stream = dataclasses.replace(CFG.stream, shed_video_after=1)
    fake, col = FakeBackend(stream), Collector("s")
    slow_asr = fake.gate("transcribe", 0)

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("s", "Ann", True)
            await push(rec, "s", conversation(FIRST, SECOND), video=True)
            await until(lambda: len(fake.of("transcribe")) == 2, "utterance 1 to start")
            assert rec.in_flight("s") == 2
            slow_asr.set()
            await until(lambda: len(col.of("s", "emotion")) == 2 and rec.in_flight("s") == 0, "both emotions")
            await push(rec, "s", np.concatenate([synth_speech(THIRD), silence(1.0)]), video=True)
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    emotions = col.of("s", "emotion")
    assert [(e["utterance"], e["status"]) for e in emotions] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert [e["present"] for e in emotions] == [["text", "audio", "video"], ["text", "audio"],
                                                ["text", "audio", "video"]]
    assert emotions[1]["modalities"]["video"] == {"present": False, "label": None, "probs": None}
    assert emotions[0]["modalities"]["video"]["label"] == TOP
    videos = fake.of("encode:video")
    assert len(videos) == 2, "the shed utterance makes no video call"
    for call in videos:
        (item,) = call.items
        assert isinstance(item, VideoInput) and 1 <= len(item.frames) <= CFG.encoders.video.num_frames
    assert [c.vectors["video"] is not None for c in fake.of("fuse")] == [True, False, True]
    assert fake.of("crop") == []  # crop_on_arrival is off: frames are kept whole for the utterance's end


def test_interims_come_before_their_final_and_never_push() -> None:
    """Long speech gets emotion_interim events from peek(); fuse() is called once per utterance only."""
    stream = dataclasses.replace(CFG.stream, interim_every_s=0.5)
    fake, col = FakeBackend(stream), Collector("s")

    async def main() -> None:
        rec = recognizer(fake, col)

        async def settle() -> None:  # a real-time stream: each interim is back before much more speech arrives
            task = rec.sessions["s"].interim
            if task is not None:
                await task

        try:
            await rec.open("s", "Ann", False)
            await push(rec, "s", conversation(LONG, SECOND), settle=settle)
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    events = col.of("s")
    interims = [e for e in events if e["type"] == "emotion_interim"]
    finals = {e["utterance"]: e for e in events if e["type"] == "emotion"}
    assert sorted(finals) == [0, 1]
    assert len([e for e in interims if e["utterance"] == 0]) >= 3, "about 4.9 s of speech at one per 0.5 s"
    assert len(interims) == len(fake.of("peek")), "every peek's interim is published while its speech goes on"
    transcript0 = next(e for e in events if e["type"] == "transcript" and e["utterance"] == 0)
    for e in interims:
        final = finals[e["utterance"]]
        assert e["final"] is False and e["status"] == "ok" and e["label"] == TOP
        assert e["seq"] < final["seq"], "an interim never follows its final"
        assert e["start"] == pytest.approx(final["start"], abs=0.05) and e["end"] <= final["end"] + 1e-6
        if e["utterance"] == 0:
            assert e["seq"] < transcript0["seq"]
    assert [e["end"] for e in interims if e["utterance"] == 0] == sorted(e["end"] for e in interims
                                                                          if e["utterance"] == 0)
    assert [e["final"] for e in finals.values()] == [True, True]
    fused = fake.of("fuse")
    assert len(fused) == 2, "interims must not push into the fusion window"
    finals_text = [e["text"] for e in col.of("s", "transcript")]
    assert [f"line {c.code}" for c in fused] == finals_text
    assert all((c.session, c.speaker) == ("s", "Ann") for c in fake.of("peek") + fused)


def test_two_sessions_keep_their_own_calls_contexts_and_ends() -> None:
    """Interleaved sessions: each fuse() names its own session and speaker, prompts never mix, end() ends each."""
    fake, col = FakeBackend(default_delay=0.01), Collector("a", "b")
    ended: dict[str, list[str]] = {}

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("a", "Ann", False)
            await rec.open("b", None, False)
            await asyncio.gather(push(rec, "a", conversation(FIRST, SECOND)),
                                 push(rec, "b", conversation(THIRD, FIRST, lead=0.8)))
            await rec.end("a")
            ended["after a"] = [c.session for c in fake.of("end_session")]
            await rec.end("b")
        finally:
            await shut(rec, fake)
        ended["open"] = list(rec.sessions)

    run(main)
    assert col.errors == []
    assert ended == {"after a": ["a"], "open": []}
    assert [c.session for c in fake.of("end_session")] == ["a", "b"]
    for session, speaker in (("a", "Ann"), ("b", "b")):
        assert col.kinds(session) == [("transcript", 0), ("emotion", 0), ("transcript", 1), ("emotion", 1)]
        texts = [e["text"] for e in col.of(session, "transcript")]
        fused = [c for c in fake.of("fuse") if c.session == session]
        assert [f"line {c.code}" for c in fused] == texts, "a session's window gets its own utterances, in order"
        assert all(c.speaker == speaker for c in fused)
        assert all(e["speaker"] == speaker for e in col.of(session))
        assert all(e["status"] == "ok" for e in col.of(session, "emotion"))
        assert list(text_items(fake)[texts[1]].context) == [(speaker, texts[0])]
        last_fuse = max(i for i, c in enumerate(fake.calls) if c.name == "fuse" and c.session == session)
        assert fake.index_of("end_session", session) > last_fuse
    assert len(fake.of("fuse")) == 4


def test_whisper_audio_vectors_replace_the_audio_encoder() -> None:
    """With info.audio_from_asr the ASR's own vector is fused as audio and no audio encoder is called."""
    fake, col = FakeBackend(audio_from_asr=True), Collector("s")

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("s", "Ann", False)
            await push(rec, "s", conversation(FIRST, SECOND))
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    assert fake.of("encode:audio") == []
    fused = fake.of("fuse")
    assert [c.code for c in fused] == [0, 1]
    for c in fused:
        np.testing.assert_array_equal(c.vectors["audio"], np.full(DIMS["audio"], c.code, np.float32))
    emotions = col.of("s", "emotion")
    assert [e["present"] for e in emotions] == [["text", "audio"], ["text", "audio"]]
    assert all("audio" not in e["timing"]["stages_ms"] for e in emotions)


def test_fake_and_local_backend_follow_the_backend_protocol() -> None:
    """The recognizer is written against Backend only; both the fake and LocalBackend must provide all of it."""
    from magtkd_stream.streaming.local_backend import LocalBackend

    declared = {n for n, v in vars(Backend).items() if inspect.isfunction(v) and not n.startswith("_")}
    assert declared == set(PROTOCOL_METHODS)
    assert {"cfg", "stream", "info"} <= set(Backend.__annotations__)
    fake = FakeBackend()
    assert isinstance(fake, Backend)
    assert not isinstance(object(), Backend)
    local = LocalBackend(CFG, fake.stream, {}, fake.info)  # the plain constructor loads no model
    assert isinstance(local, Backend)
    for cls in (LocalBackend, FakeBackend):
        for name in PROTOCOL_METHODS:
            assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
            want = getattr(Backend, name)
            got = getattr(cls, name)
            assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(want), f"{cls.__name__}.{name}"
            assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters)


def test_no_backend_call_for_a_session_after_its_end_session() -> None:
    """end_session() forgets the session's window; a peek() after it would recreate that window for good."""
    stream = dataclasses.replace(CFG.stream, interim_every_s=0.5)
    fake, col = FakeBackend(stream), Collector("s")
    interim_asr = fake.gate("transcribe", 0)

    async def main() -> None:
        rec = recognizer(fake, col)
        try:
            await rec.open("s", "Ann", False)
            await push(rec, "s", np.concatenate([silence(0.5), synth_speech(LONG)[: 2 * SR]]))
            interim = rec.sessions["s"].interim
            assert interim is not None and len(fake.of("transcribe")) == 1 and rec.in_flight("s") == 0
            # The interim's ASR returns once the final is out (or after 1 s, should end() wait for the interim).
            col.hooks.append(lambda e: interim_asr.set() if e["type"] == "emotion" else None)
            asyncio.get_running_loop().call_later(1.0, interim_asr.set)
            await rec.end("s")  # the speaker stops mid-sentence: the open utterance is flushed and finalized
            assert col.kinds("s") == [("transcript", 0), ("emotion", 0)]
            await asyncio.gather(interim, return_exceptions=True)  # done, or cancelled by end()
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == [] and [e["type"] for e in col.events] == ["transcript", "emotion"]
    after = fake.calls[fake.index_of("end_session", "s") + 1 :]
    assert [(c.name, c.session) for c in after if c.session == "s"] == []


def test_diarized_speakers_are_given_in_utterance_order_beside_a_slow_asr() -> None:
    """Each utterance's speaker comes from its voice, in speech order even when an earlier ASR is slow."""
    stream = dataclasses.replace(CFG.stream, diarize=DiarizeConfig(enabled=True, threshold=0.9))
    fake, col = FakeBackend(stream), Collector("s")
    slow_asr = fake.gate("transcribe", 0)
    voices = iter([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # utterance 0 and 2 one voice, utterance 1 another
    embedded: list[int] = []

    def embedder(audio: np.ndarray) -> np.ndarray:
        embedded.append(len(audio))
        return np.asarray(next(voices), np.float32)

    async def main() -> None:
        rec = Recognizer(fake, col.publish, vad_threads=1, embedder=embedder)
        try:
            await rec.open("s", "Ann", False)
            await push(rec, "s", conversation(FIRST, SECOND, THIRD))
            await until(lambda: len(embedded) == 3, "the three utterances' embeddings, ASR 0 still held")
            slow_asr.set()
            await rec.end("s")
        finally:
            await shut(rec, fake)

    run(main)
    assert col.errors == []
    assert [e["speaker"] for e in col.of("s", "transcript")] == ["Ann", "Ann 2", "Ann"]
    assert [e["speaker"] for e in col.of("s", "emotion")] == ["Ann", "Ann 2", "Ann"]
    items = text_items(fake)
    assert list(items["line 2"].context) == [("Ann", "line 0"), ("Ann 2", "line 1")]
