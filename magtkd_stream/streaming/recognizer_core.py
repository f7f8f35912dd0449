"""The per-session streaming core: audio and frames in, utterance jobs out (no Ray, no I/O).

A plain synchronous object (push_audio / push_frame / finish) that a server
only transports: voice activity detection cuts utterances with media
timestamps, the frames inside each utterance's span are collected and sampled
down to the video encoder's frame count, and every job remembers when (wall
clock) its last audio sample arrived so that latency is measured from the
end of speech, not from when the pipeline got around to it. The buffers are
bounded: old audio is dropped by the segmenter, old frames here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from magtkd_stream.streaming.asr import validate_waveform
from magtkd_stream.config import VADConfig
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.streaming.vad import VADSegmenter

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# A segment's audio -> its pieces, one per voice (magtkd_stream/streaming/diarize.py OnlineDiarizer.split)
Splitter = Callable[[np.ndarray], list[Any]]


@dataclass
class UtteranceJob:
    """One utterance, ready for recognition; `text` is filled in once ASR has run."""

    session: str
    index: int  # 0, 1, 2, ... within the session
    speaker: str
    start_s: float  # media seconds from the session start
    end_s: float
    audio: np.ndarray = field(repr=False)  # float32 mono 16 kHz
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # BGR uint8, at most num_frames
    frame_times: list[float] = field(default_factory=list)
    context: list[tuple[str, str]] = field(default_factory=list)  # (speaker, text) of earlier utterances
    end_wall: float = 0.0  # wall clock when the audio sample at end_s arrived
    cut_wall: float = 0.0  # wall clock when the segmenter released the utterance
    cut: bool = False  # ended by the length limit, not by silence
    text: Optional[str] = None


def sample_evenly(n: int, k: int) -> list[int]:
    """At most k indices spread evenly over range(n), first and last included."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


class FrameBuffer:
    """Recent (ts, frame) pairs, bounded in count and in time span.

    Frames older than `horizon_s` before the newest one can belong to no open
    utterance (the segmenter cuts speech at max_utterance_s) and are dropped.
    When more than `max_frames` remain, every other frame is dropped and the
    minimum spacing of new frames doubles, so a long utterance keeps frames
    spread over its whole span at a bounded memory cost. Thread-safe: faces
    cropped as frames arrive are pushed while the segmenter's thread takes.
    """

    def __init__(self, max_frames: int, horizon_s: float) -> None:
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        self.max_frames = max_frames
        self.horizon_s = horizon_s
        self.items: deque[tuple[float, np.ndarray]] = deque()
        self.min_gap = 0.0
        self._lock = threading.Lock()

    def push(self, ts: float, frame: np.ndarray) -> None:
        with self._lock:
            self._push(ts, frame)

    def _push(self, ts: float, frame: np.ndarray) -> None:
        if self.items and ts < self.items[-1][0]:
            return  # out of order: a stale frame, never worth reordering the buffer for
        if self.items and ts - self.items[-1][0] < self.min_gap:
            return
        self.items.append((ts, frame))
        while self.items and self.items[0][0] < ts - self.horizon_s:
            self.items.popleft()
        if len(self.items) > self.max_frames:
            kept = list(self.items)[::-1][::2][::-1]  # keep the newest and every second one before it
            self.items = deque(kept)
            self.min_gap = max(2 * self.min_gap, (kept[-1][0] - kept[0][0]) / max(1, len(kept) - 1))
        elif len(self.items) <= self.max_frames // 4:
            self.min_gap /= 2

    def peek(self, start_s: float, end_s: float, limit: int) -> list[np.ndarray]:
        """Frames inside [start_s, end_s] sampled down to `limit`, all kept (an utterance still open)."""
        with self._lock:
            inside = [f for t, f in self.items if start_s <= t <= end_s]
        return [inside[i] for i in sample_evenly(len(inside), limit)]

    def take(self, start_s: float, end_s: float, limit: int) -> tuple[list[float], list[np.ndarray]]:
        """Frames inside [start_s, end_s] sampled down to `limit`; frames up to end_s are released."""
        with self._lock:
            inside = [(t, f) for t, f in self.items if start_s <= t <= end_s]
            while self.items and self.items[0][0] <= end_s:
                self.items.popleft()
            if len(self.items) <= self.max_frames // 4:
                self.min_gap = 0.0
        picked = [inside[i] for i in sample_evenly(len(inside), limit)]
        return [t for t, _ in picked], [f for _, f in picked]


class Transcripts:
    """Earlier lines of a conversation by turn, for the prompt's context (old turns are forgotten).

    A session keeps its own by utterance index; a conversation of several
    participants keeps one, by the order its utterances were cut.
    """

    def __init__(self, context_turns: int) -> None:
        self.context_turns = max(1, context_turns)
        self._lines: dict[int, tuple[str, str]] = {}

    def set(self, turn: int, speaker: str, text: str) -> None:
        """Record turn `turn`'s transcript; later turns see it as context."""
        self._lines[turn] = (speaker, text)
        for old in [i for i in self._lines if i < turn - 4 * self.context_turns]:
            del self._lines[old]

    def before(self, turn: int) -> list[tuple[str, str]]:
        """(speaker, text) of the up to context_turns turns before `turn` with a transcript, oldest first."""
        lines = [self._lines[i] for i in sorted(self._lines) if i < turn and self._lines[i][1]]
        return lines[-self.context_turns :]


class SessionCore:
    """Segments one session's stream into UtteranceJobs; feed it in arrival order.

    `speaker` labels every utterance of the session (one speaker per publishing
    connection unless the client names them). `vad_model` may be shared between
    sessions (the Silero ONNX session is stateless); None loads faster-whisper's.
    """

    def __init__(
        self,
        session: str,
        speaker: str,
        vad_cfg: Optional[VADConfig] = None,
        num_frames: int = 8,
        max_frames: int = 48,
        context_turns: int = 8,
        vad_model: Any = None,
        clock: Clock = time.time,
        splitter: Optional[Splitter] = None,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.session = session
        self.speaker = speaker
        self.vad_cfg = vad_cfg or VADConfig()
        self.segmenter = VADSegmenter(self.vad_cfg, model=vad_model)
        self.num_frames = num_frames
        horizon = self.vad_cfg.max_utterance_s + 2 * self.vad_cfg.pad_ms / 1000 + 1.0
        self.frames = FrameBuffer(max(2, max_frames), horizon)
        self.transcripts = Transcripts(context_turns)
        self.clock = clock
        self.splitter = splitter  # cuts a segment where the voice changes (diarization); None: never
        self.next_index = 0
        self.samples = 0  # audio samples received
        self.frames_received = 0
        self._arrivals: deque[tuple[float, float]] = deque()  # (media end of a push, wall clock)
        self.finished = False

    # ---- input ------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, wall: Optional[float] = None) -> list[UtteranceJob]:
        """Feed float32 mono 16 kHz samples; returns the utterances that ended.

        `wall` is when these samples arrived (default: now); replays pass the
        wall time at which the media position was reached.
        """
        if self.finished:
            raise RuntimeError(f"session {self.session!r} is finished; no more audio accepted")
        samples = validate_waveform(samples, "samples")
        now = self.clock() if wall is None else wall
        self.samples += int(samples.size)
        position = self.samples / SAMPLE_RATE
        self._arrivals.append((position, now))
        while len(self._arrivals) > 1 and self._arrivals[0][0] < position - self.frames.horizon_s:
            self._arrivals.popleft()
        return self._jobs(self.segmenter.push(samples), now)

    def push_frame(self, ts: float, frame_bgr: np.ndarray) -> None:
        """Keep a video frame (media time `ts` seconds) for the utterance that will span it.

        The frame may also be a face already cropped from it (gray H x W), which
        the face encoder then takes as it is.
        """
        self.receive_frame(frame_bgr)
        self.frames.push(float(ts), frame_bgr)

    def receive_frame(self, frame_bgr: Any) -> None:
        """Count a frame; raise unless the session takes frames and this is one (uint8 BGR H x W x 3 or gray H x W)."""
        if self.finished:
            raise RuntimeError(f"session {self.session!r} is finished; no more frames accepted")
        if not isinstance(frame_bgr, np.ndarray) or frame_bgr.dtype != np.uint8 or frame_bgr.ndim not in (2, 3):
            raise ValueError("frame_bgr must be a uint8 numpy array, H x W x 3 in BGR order (or gray H x W)")
        self.frames_received += 1

    def keep_face(self, ts: float, crop: np.ndarray) -> None:
        """Keep a face cropped from a frame that receive_frame took (it may arrive late, from another thread)."""
        if not self.finished:
            self.frames.push(float(ts), crop)

    def finish(self, wall: Optional[float] = None) -> list[UtteranceJob]:
        """End of stream: the utterance still open, if any. Later pushes are refused."""
        if self.finished:
            return []
        self.finished = True
        return self._jobs(self.segmenter.flush(), self.clock() if wall is None else wall)

    def open_utterance(self) -> Optional[UtteranceJob]:
        """The utterance still being spoken, as a job (audio and frames so far); None in silence.

        Its index is the one the finished utterance will get; nothing is consumed,
        so interim predictions can be made from it as often as wanted.
        """
        if self.finished:
            return None
        speech = self.segmenter.open_speech()
        if speech is None:
            return None
        start_s, audio = speech
        end_s = start_s + audio.size / SAMPLE_RATE
        return UtteranceJob(
            session=self.session, index=self.next_index, speaker=self.speaker, start_s=start_s, end_s=end_s,
            audio=audio, frames=self.frames.peek(start_s, end_s, self.num_frames),
            context=self.context_before(self.next_index), end_wall=self.arrival_wall(end_s), cut_wall=self.clock(),
        )

    # ---- transcripts (context for the prompt) --------------------------------------
    def set_transcript(self, index: int, text: str, speaker: Optional[str] = None) -> None:
        """Record utterance `index`'s transcript; later utterances see it as context."""
        self.transcripts.set(index, speaker or self.speaker, text)

    def context_before(self, index: int) -> list[tuple[str, str]]:
        """(speaker, text) of the up to context_turns utterances before `index` with a transcript, oldest first."""
        return self.transcripts.before(index)

    # ---- helpers ----------------------------------------------------------------
    def arrival_wall(self, media_s: float) -> float:
        """Wall clock at which the audio sample at media time `media_s` arrived."""
        for end, wall in self._arrivals:
            if end >= media_s - 1e-6:
                return wall
        return self._arrivals[-1][1] if self._arrivals else self.clock()

    def _pieces(self, utt: Any) -> list[tuple[float, float, np.ndarray, bool]]:
        """(start_s, end_s, audio, cut) of each voice's piece of a segment (the whole one without a splitter)."""
        pieces = None
        if self.splitter is not None:
            try:
                pieces = self.splitter(utt.audio)
            except Exception:  # a failed search for a change of voice costs the split only
                log.exception("session %s: looking for a change of voice failed; the segment stays whole", self.session)
        if not pieces:
            return [(utt.start_s, utt.end_s, utt.audio, utt.cut)]
        out = []
        for k, p in enumerate(pieces):
            last = k == len(pieces) - 1
            out.append((utt.start_s + p.start / SAMPLE_RATE, utt.end_s if last else utt.start_s + p.end / SAMPLE_RATE,
                        utt.audio[p.start:p.end], utt.cut and last))
        return out

    def _jobs(self, utterances: list, now: float) -> list[UtteranceJob]:
        jobs = []
        for utt in utterances:
            for start_s, end_s, audio, cut in self._pieces(utt):
                times, frames = self.frames.take(start_s, end_s, self.num_frames)
                job = UtteranceJob(
                    session=self.session,
                    index=self.next_index,
                    speaker=self.speaker,
                    start_s=start_s,
                    end_s=end_s,
                    audio=audio,
                    frames=frames,
                    frame_times=times,
                    context=self.context_before(self.next_index),
                    end_wall=self.arrival_wall(end_s),
                    cut_wall=now,
                    cut=cut,
                )
                self.next_index += 1
                jobs.append(job)
        if jobs:  # arrivals before the last cut are no longer needed
            last = jobs[-1].end_s
            while len(self._arrivals) > 1 and self._arrivals[1][0] <= last:
                self._arrivals.popleft()
        return jobs
