"""Recognizer: the per-session recognition algorithm over a Backend, one SessionCore per session.

Audio goes through voice activity detection (on a small thread pool, so the
event loop keeps serving other sessions); every utterance it cuts becomes its
own task: ASR in parallel with the video (and, without Whisper audio vectors,
audio) encoder, then the transcript event, then the prompted text encoder
with the session's earlier transcripts as context, then fusion, then the
emotion event. Utterances of a session overlap in flight but publish in
order, and fusion sees them in order, so its sliding window stays causal.
A failed backend call fails only its utterance, whose emotion event says so.
With a face encoder, frames are cropped to faces as they arrive (at most
stream.crop_fps per second), so at the utterance's end the video encoder only
runs its CNN on the kept crops and no longer competes with ASR for the CPU.

The models are a Backend (magtkd_stream/streaming/backend.py): the Ray actors behind
the websocket service, or in-process workers for `run --backend local` and
the Python API (magtkd_stream/api.py). This object is the gateway's SessionSink.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import numpy as np

from magtkd_stream.streaming.backend import Backend, BackendError
from magtkd_stream.encoders.base import AudioInput, TextInput, VideoInput
from magtkd_stream.names import MODALITIES
from magtkd_stream.wire.events import make_emotion, make_transcript, modality_result
from magtkd_stream.streaming.diarize import OnlineDiarizer, SpeakerEmbedder
from magtkd_stream.streaming.recognizer_core import SessionCore, Transcripts, UtteranceJob

log = logging.getLogger(__name__)

PublishFn = Callable[[str, Mapping[str, Any]], Any]
# (job, backbone vectors by modality, fused output) of every final utterance that fused
TapFn = Callable[[UtteranceJob, Mapping[str, Optional[np.ndarray]], Mapping[str, Any]], None]
ALL_CONTEXT_TURNS = 32  # earlier transcripts kept per session when the config asks for all of them
MAX_CROPS_IN_FLIGHT = 4  # per session; a real-time stream at crop_fps never comes close


CONVERSATION_KEY = "conversation:"  # fusion windows of conversations; session ids never hold a ":"


@dataclass
class _Conversation:
    """What a conversation's participants share: one context window, one prompt context, one order.

    A session of its own is a conversation of one participant (its key is the
    session id). Utterances of all participants take turns in the order the
    VAD cuts them, and each turn waits for the earlier ones' transcripts (its
    prompt's context) and events (the window stays causal).
    """

    key: str  # the fusion window's name
    transcripts: Transcripts
    name: Optional[str] = None  # the conversation id the clients gave; None: a session of its own
    opened: float = 0.0  # wall clock when its first participant opened: the start of its clock
    members: set[str] = field(default_factory=set)
    turns: int = 0  # utterances cut so far, over every participant
    transcribed: Optional[asyncio.Future] = None  # the newest turn's transcript is known
    published: Optional[asyncio.Future] = None  # the newest turn's events are out


@dataclass
class _Session:
    core: SessionCore
    speaker: str
    video: bool
    conv: _Conversation
    tasks: set[asyncio.Task] = field(default_factory=set)
    utterances: int = 0
    failed: int = 0
    crops: set[asyncio.Task] = field(default_factory=set)  # face crops in flight (crop on arrival)
    interim: Optional[asyncio.Task] = None  # the interim prediction in flight
    interim_marks: dict[int, float] = field(default_factory=dict)  # utterance -> seconds spoken at its last interim
    last_crop_ts: float = float("-inf")
    diarizer: Optional[OnlineDiarizer] = None  # stream.diarize.enabled: several voices in this session
    labelled: Optional[asyncio.Future] = None  # the newest utterance's speaker is known (diarization)


async def _timed(aw: Awaitable[Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = await aw
    return result, (time.perf_counter() - t0) * 1e3


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BackendError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


class Recognizer:
    """Live sessions over one Backend: audio and frames in, transcript and emotion events out.

    Implements actors.gateway.SessionSink; `replay` (a file) and the Python API drive it the same way.

    Speaker: the client's label when given, else the session id (one speaker
    per publishing connection); with stream.diarize.enabled, each utterance's
    voice decides it (magtkd_stream/streaming/diarize.py). `clock` is the wall clock latency is measured with.
    `tap`, when given, sees the encoder vectors of every final utterance that
    fused, so training can learn from exactly what the service computes.
    `embedder` replaces the speaker encoder diarization uses (a test seam).
    """

    def __init__(self, backend: Backend, publish: Optional[PublishFn] = None, clock: Callable[[], float] = time.time,
                 vad_threads: int = 2, tap: Optional[TapFn] = None,
                 embedder: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        self.backend = backend
        self._publish = publish
        self._tap = tap
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self.conversations: dict[str, _Conversation] = {}  # by key
        self._vad_pool = ThreadPoolExecutor(max_workers=max(1, vad_threads), thread_name_prefix="vad")
        self._vad_model: Any = None
        self._embedder = embedder  # speaker embeddings for diarization; None: resemblyzer's, loaded on first use
        self.model_id: str = backend.info.model
        self.num_frames = backend.cfg.encoders.video.num_frames
        # 0 in the config means "the whole dialogue"; the prompt's token budget truncates it anyway.
        self.context_turns = backend.cfg.encoders.text.context_turns or ALL_CONTEXT_TURNS

    # ------------------------------------------------------------ SessionSink

    def attach(self, publish: PublishFn) -> None:
        self._publish = publish

    async def open(self, session: str, speaker: Optional[str], video: bool, conversation: Optional[str] = None,
                   names: Sequence[str] = ()) -> None:
        """Open a session; with `conversation`, it joins that conversation's window and context (made if new).

        names: labels for the voices diarization tells apart, in order of appearance (instead of
        stream.diarize.names); without diarization the session has one speaker and they are not used.
        """
        if session in self.sessions:
            raise ValueError(f"session {session!r} is already open in this sink")
        loop = asyncio.get_running_loop()
        if self._vad_model is None:
            from faster_whisper.vad import get_vad_model

            self._vad_model = await loop.run_in_executor(self._vad_pool, get_vad_model)
        name = speaker or session
        diarizer = None
        if self.backend.stream.diarize.enabled:
            if self._embedder is None:
                self._embedder = await loop.run_in_executor(self._vad_pool, SpeakerEmbedder)
            settings = self.backend.stream.diarize
            if names:
                settings = dataclasses.replace(settings, names=list(names))
            diarizer = OnlineDiarizer(settings, self._embedder, name)
        core = SessionCore(
            session, name, self.backend.stream.vad, num_frames=self.num_frames,
            max_frames=self.backend.stream.max_frames, context_turns=self.context_turns,
            vad_model=self._vad_model, clock=self.clock, splitter=None if diarizer is None else diarizer.split,
        )
        key = session if conversation is None else CONVERSATION_KEY + conversation
        conv = self.conversations.get(key)
        if conv is None:
            conv = self.conversations[key] = _Conversation(key, Transcripts(self.context_turns), conversation,
                                                           self.clock())
        conv.members.add(session)
        self.sessions[session] = _Session(core, name, video, conv, diarizer=diarizer)

    def conversation_opened(self, conversation: str) -> float:
        """Wall clock when the open conversation's first participant opened: the start of its clock."""
        return self.conversations[CONVERSATION_KEY + conversation].opened

    async def audio(self, session: str, samples: np.ndarray, wall: Optional[float] = None) -> None:
        """Float32 mono 16 kHz samples; `wall`: when they arrived (default now)."""
        sess = self._session(session)
        now = self.clock() if wall is None else wall
        jobs = await asyncio.get_running_loop().run_in_executor(self._vad_pool, sess.core.push_audio, samples, now)
        self._launch(sess, jobs)
        self._maybe_interim(sess)

    async def video(self, session: str, ts: float, frame_bgr: np.ndarray) -> None:
        """Keep a frame for the utterance that will span it; a face encoder crops it now, at crop_fps."""
        sess = self._session(session)
        if not self.backend.info.crop_on_arrival:
            sess.core.push_frame(ts, frame_bgr)
            return
        sess.core.receive_frame(frame_bgr)
        if ts - sess.last_crop_ts < 1.0 / self.backend.stream.crop_fps - 1e-6:
            return  # thinned: the utterance samples num_frames faces anyway
        sess.last_crop_ts = ts
        while len(sess.crops) >= MAX_CROPS_IN_FLIGHT:  # back-pressure: a fast replay waits for the detector
            await asyncio.wait(set(sess.crops), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._crop(sess, ts, frame_bgr), name=f"crop:{session}")
        sess.crops.add(task)
        task.add_done_callback(sess.crops.discard)

    async def _crop(self, sess: _Session, ts: float, frame_bgr: np.ndarray) -> None:
        """Detect the face now so the utterance's end only runs the CNN; a failure costs this frame only."""
        session = sess.core.session
        try:
            crop = await self.backend.crop(frame_bgr, session)  # the session's face tracker
        except Exception as exc:
            log.warning("session %s: face crop at %.2f s failed: %s", session, ts, _describe(exc))
            return
        if crop is not None:
            sess.core.keep_face(ts, crop)

    async def end(self, session: str) -> None:
        """Flush the open utterance and return once every event of the session is published."""
        sess = self.sessions.get(session)
        if sess is None:
            return
        try:
            if sess.interim is not None:  # the final event supersedes it, and its peek must not outlive end_session
                sess.interim.cancel()
                await asyncio.gather(sess.interim, return_exceptions=True)
            if sess.crops:  # the last frames' faces belong to the last utterance
                await asyncio.gather(*list(sess.crops), return_exceptions=True)
            jobs = await asyncio.get_running_loop().run_in_executor(self._vad_pool, sess.core.finish, None)
            self._launch(sess, jobs)
            while sess.tasks:
                await asyncio.gather(*list(sess.tasks), return_exceptions=True)
        finally:
            del self.sessions[session]
            conv = sess.conv
            conv.members.discard(session)
            if not conv.members:  # the last participant left: the conversation's window goes
                self.conversations.pop(conv.key, None)
                try:
                    await self.backend.end_session(conv.key)
                except Exception as exc:  # the window is lost with a dead worker anyway
                    log.warning("fusion end_session(%s): %s", conv.key, _describe(exc))

    async def close(self) -> None:
        """End every open session (server shutdown), then release the VAD threads."""
        await asyncio.gather(*(self.end(s) for s in list(self.sessions)), return_exceptions=True)
        self._vad_pool.shutdown(wait=False)

    # ------------------------------------------------------------ per utterance

    def _session(self, session: str) -> _Session:
        sess = self.sessions.get(session)
        if sess is None:
            raise KeyError(f"session {session!r} is not open; call open() first")
        return sess

    def _launch(self, sess: _Session, jobs: list[UtteranceJob]) -> None:
        loop = asyncio.get_running_loop()
        for job in jobs:
            if job.frames and len(sess.tasks) >= self.backend.stream.shed_video_after:
                log.warning("session %s: %d utterances in flight; utterance %d goes without video",
                            job.session, len(sess.tasks), job.index)
                job.frames, job.frame_times = [], []
            conv = sess.conv
            transcribed, published = loop.create_future(), loop.create_future()
            label = None
            if sess.diarizer is not None:  # beside the ASR, one utterance after the other
                label = sess.labelled = loop.create_task(self._label(sess, job, sess.labelled),
                                                         name=f"speaker:{job.session}:{job.index}")
            task = loop.create_task(
                self._process(sess, job, conv.turns, conv.transcribed, conv.published, transcribed, published,
                              label),
                name=f"utt:{job.session}:{job.index}",
            )
            conv.turns += 1
            conv.transcribed, conv.published = transcribed, published
            sess.utterances += 1
            sess.tasks.add(task)
            task.add_done_callback(sess.tasks.discard)

    def _emit(self, session: str, event: Mapping[str, Any]) -> None:
        if self._publish is None:
            raise RuntimeError("Recognizer has no publish callable; call attach(publish) first")
        try:
            self._publish(session, event)
        except Exception:
            log.exception("publishing a %s event of session %s failed", event.get("type"), session)

    async def _process(
        self,
        sess: _Session,
        job: UtteranceJob,
        turn: int,
        prev_transcribed: Optional[asyncio.Future],
        prev_published: Optional[asyncio.Future],
        transcribed: asyncio.Future,
        published: asyncio.Future,
        label: Optional[asyncio.Future] = None,
    ) -> None:
        p = self.backend
        stages: dict[str, float] = {"vad_wait": max(0.0, (job.cut_wall - job.end_wall) * 1e3)}
        side: dict[str, asyncio.Task] = {}
        error: Optional[str] = None
        asr: Any = None
        try:
            side.update(self._media_tasks(job))
            try:
                asr, stages["asr"] = await _timed(p.transcribe(job.audio))
                job.text = asr.text
            except Exception as exc:
                error = f"asr: {_describe(exc)}"
            if label is not None:
                await label  # job.speaker: the voice's label
            sess.conv.transcripts.set(turn, job.speaker, job.text or "")
            if prev_transcribed is not None:
                await prev_transcribed  # earlier transcripts (every participant's) are this prompt's context
            if not transcribed.done():
                transcribed.set_result(None)
            if error is None and (job.text or "").strip():
                item = TextInput(job.speaker, job.text or "", sess.conv.transcripts.before(turn))
                side["text"] = asyncio.ensure_future(_timed(p.encode("text", [item])))
            if prev_published is not None:
                await prev_published
            if asr is not None:
                self._emit(job.session, make_transcript(job.session, job.index, job.text or "", job.speaker,
                                                        job.start_s, job.end_s, sess.conv.name))
            vectors, side_error = await self._vectors(asr, side, stages)
            error = error or side_error
            fused: Optional[dict[str, Any]] = None
            if error is None:
                try:
                    fused, stages["fusion"] = await _timed(p.fuse(sess.conv.key, job.speaker, vectors))
                except Exception as exc:
                    error = f"fusion: {_describe(exc)}"
            if fused is not None and self._tap is not None:
                try:
                    self._tap(job, vectors, fused)
                except Exception:
                    log.exception("the vector tap failed on utterance %d of session %s", job.index, job.session)
            self._emit(job.session, self._emotion(job, vectors, fused, stages, error))
        except asyncio.CancelledError:
            for task in side.values():
                task.cancel()
            raise
        except Exception as exc:  # a bug must cost this utterance only, never the session's order
            log.exception("utterance %d of session %s failed", job.index, job.session)
            self._emit(job.session, self._emotion(job, {}, None, stages, f"internal: {_describe(exc)}"))
        finally:
            for fut in (transcribed, published):
                if not fut.done():
                    fut.set_result(None)

    async def _label(self, sess: _Session, job: UtteranceJob, previous: Optional[asyncio.Future]) -> None:
        """Give the job its speaker once the session's previous utterance has its own (labels are causal)."""
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            job.speaker = await asyncio.get_running_loop().run_in_executor(
                self._vad_pool, sess.diarizer.assign, job.audio)
        except Exception as exc:  # a failed embedding costs the label only: the session's name stays
            log.warning("session %s: speaker of utterance %d unknown: %s", job.session, job.index, _describe(exc))

    def _media_tasks(self, job: UtteranceJob) -> dict[str, asyncio.Future]:
        """Video (and, without Whisper audio vectors, audio) encoding, started alongside ASR."""
        p, side = self.backend, {}
        if job.frames and p.has("video"):
            side["video"] = asyncio.ensure_future(_timed(p.encode("video", [VideoInput(job.frames)])))
        if not p.info.audio_from_asr:
            side["audio"] = asyncio.ensure_future(_timed(p.encode("audio", [AudioInput(job.audio)])))
        return side

    async def _vectors(
        self, asr: Any, side: Mapping[str, asyncio.Future], stages: dict[str, float]
    ) -> tuple[dict[str, Optional[np.ndarray]], Optional[str]]:
        """Backbone vectors by modality (None: absent) from ASR and the side tasks; the first error, if any."""
        vectors: dict[str, Optional[np.ndarray]] = {m: None for m in MODALITIES}
        error = None
        if asr is not None and self.backend.info.audio_from_asr and asr.audio_vector is not None:
            vectors["audio"] = np.asarray(asr.audio_vector, dtype=np.float32)
        for m, task in side.items():
            try:
                (vecs, present), stages[m] = await task
                if bool(present[0]):
                    vectors[m] = vecs[0]
            except Exception as exc:
                error = error or f"{m}: {_describe(exc)}"
        return vectors, error

    # ------------------------------------------------------------ interim events

    def _maybe_interim(self, sess: _Session) -> None:
        """Start an interim prediction when speech has run another interim_every_s and the pipeline is idle.

        Only when no utterance of any session is in flight, no other interim
        runs and no other session is speaking: an interim never lands between
        an earlier utterance's events, and a final (what latency is promised
        for) never waits behind an interim that started while another speaker
        was about to finish. Under concurrent speech interims are shed first.
        """
        every = self.backend.stream.interim_every_s
        if every <= 0 or any(x.tasks or x.interim is not None for x in self.sessions.values()):
            return
        if any(x is not sess and x.core.segmenter.speaking for x in self.sessions.values()):
            return
        spoken = sess.core.segmenter.open_speech_seconds()
        index = sess.core.next_index
        if spoken is None or spoken - sess.interim_marks.get(index, 0.0) < every:
            return
        job = sess.core.open_utterance()
        if job is None:
            return
        job.context = sess.conv.transcripts.before(sess.conv.turns)
        sess.interim_marks = {index: spoken}
        sess.interim = asyncio.get_running_loop().create_task(self._interim(sess, job),
                                                              name=f"interim:{job.session}:{job.index}")

    async def _interim(self, sess: _Session, job: UtteranceJob) -> None:
        """ASR, encoders and a fusion peek over the speech so far; published unless the utterance already ended."""
        p = self.backend
        stages: dict[str, float] = {}
        side = self._media_tasks(job)
        try:
            if sess.diarizer is not None:
                job.speaker = await asyncio.get_running_loop().run_in_executor(
                    self._vad_pool, sess.diarizer.peek, job.audio)
            asr, stages["asr"] = await _timed(p.transcribe(job.audio))
            job.text = asr.text or ""
            if job.text.strip():
                item = TextInput(job.speaker, job.text, job.context)
                side["text"] = asyncio.ensure_future(_timed(p.encode("text", [item])))
            vectors, error = await self._vectors(asr, side, stages)
            if error is not None:
                raise RuntimeError(error)
            fused, stages["fusion"] = await _timed(p.peek(sess.conv.key, job.speaker, vectors))
            if sess.core.next_index != job.index or self.sessions.get(job.session) is not sess:
                return  # the utterance ended meanwhile: its final event supersedes this one
            self._emit(job.session, self._emotion(job, vectors, fused, stages, None, final=False))
        except asyncio.CancelledError:  # the session ended: its encoders' side calls go with it
            for task in side.values():
                task.cancel()
            raise
        except Exception as exc:  # an interim is a courtesy: its failure costs nothing else
            log.info("interim for utterance %d of session %s skipped: %s", job.index, job.session, _describe(exc))
            for task in side.values():
                task.cancel()
        finally:
            sess.interim = None

    def _emotion(
        self,
        job: UtteranceJob,
        vectors: Mapping[str, Optional[np.ndarray]],
        fused: Optional[dict[str, Any]],
        stages: dict[str, float],
        error: Optional[str],
        final: bool = True,
    ) -> dict[str, Any]:
        sess = self.sessions.get(job.session)
        if error is not None:
            if sess is not None:
                sess.failed += 1
            log.warning("utterance %d of session %s failed: %s", job.index, job.session, error)
            modalities = {m: modality_result(False) for m in MODALITIES}
            probs = None
        else:
            assert fused is not None
            per = fused["modalities"]
            modalities = {m: modality_result(vectors.get(m) is not None, per.get(m)) for m in MODALITIES}
            probs = fused["probs"]
        e2e = max(0.0, (self.clock() - job.end_wall) * 1e3)
        return make_emotion(
            job.session, job.index, probs=probs, modalities=modalities, start=job.start_s, end=job.end_s,
            speaker=job.speaker, text=job.text or "", model=self.model_id,
            stages_ms={k: round(v, 3) for k, v in stages.items()}, e2e_ms=round(e2e, 3), error=error, final=final,
            conversation=None if sess is None else sess.conv.name,
        )

    def in_flight(self, session: str) -> int:
        """Utterances of `session` cut but not yet published."""
        sess = self.sessions.get(session)
        return len(sess.tasks) if sess is not None else 0

    async def wait_in_flight(self, session: str, limit: int) -> None:
        """Return once fewer than `limit` utterances of `session` are in flight (back-pressure for replays)."""
        sess = self.sessions.get(session)
        while sess is not None and len(sess.tasks) >= max(1, limit):
            await asyncio.wait(set(sess.tasks), return_when=asyncio.FIRST_COMPLETED)

    def stats(self) -> dict[str, Any]:
        return {s: {"utterances": x.utterances, "failed": x.failed, "in_flight": len(x.tasks)}
                for s, x in self.sessions.items()}
