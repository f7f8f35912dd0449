"""Streaming voice-activity segmenter: PCM chunks in, utterances with media timestamps out.

A plain synchronous object (push / flush) that a server only feeds: the Silero
VAD that faster-whisper ships scores every 32 ms chunk (512 samples at 16 kHz)
with its recurrent state carried across calls, so the segmentation does not
depend on how the audio was split into pushes. Speech opens an utterance;
`min_silence_ms` of silence closes it; speech running past `max_utterance_s`
is cut, at the last short pause when there was one, so an utterance always fits
the Whisper window.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from magtkd_stream.streaming.asr import validate_waveform
from magtkd_stream.config.stream import VADConfig
from magtkd_stream.names import SAMPLE_RATE

log = logging.getLogger(__name__)

CHUNK = 512  # samples Silero scores at a time at 16 kHz
CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk
STATE_SHAPE = (1, 1, 128)
MIN_PAUSE_FOR_CUT_MS = 98  # a pause at least this long is a clean place to cut long speech


@dataclass
class Utterance:
    """One stretch of speech; times are seconds of media since the session started."""

    start_s: float
    end_s: float
    audio: np.ndarray  # float32 mono 16 kHz, padded by pad_ms where the stream allowed
    cut: bool = False  # ended because it reached max_utterance_s, not by silence


@dataclass
class _Closing:
    """Ended speech whose end padding has not been pushed yet (absolute sample indices)."""

    start: int  # padding included
    speech_end: int  # last speech sample + 1
    end: int  # padding included
    cut: bool


class VADSegmenter:
    """Per-session segmenter; `push` returns the utterances that ended, `flush` the open one.

    The ONNX session is shared between segmenters (it is stateless and thread-safe);
    the recurrent state, the audio buffer and the timeline belong to this object.
    """

    def __init__(self, cfg: Optional[VADConfig] = None, time_offset_s: float = 0.0, model: Any = None) -> None:
        self.cfg = cfg or VADConfig()
        self.time_offset_s = time_offset_s
        if model is None:
            from faster_whisper.vad import get_vad_model

            model = get_vad_model()
        self._session = model.session
        ms = SAMPLE_RATE // 1000
        self._pad = self.cfg.pad_ms * ms
        self._min_silence = self.cfg.min_silence_ms * ms
        self._min_speech = self.cfg.min_speech_ms * ms
        self._min_pause = MIN_PAUSE_FOR_CUT_MS * ms
        self._max_speech = int(self.cfg.max_utterance_s * SAMPLE_RATE) - 2 * self._pad
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a full chunk
        self._n = 0  # absolute index of the next chunk's first sample
        self._chunks: deque[np.ndarray] = deque()  # recent audio, contiguous, ending at self._n
        self._buf_start = 0
        self._last_end = 0  # end (padded) of the last emitted utterance
        self._closing: Optional[_Closing] = None  # at most one utterance waits for its padding
        self._out: list[Utterance] = []
        self._reset_model()
        self._reset_speech()

    def _reset_model(self) -> None:
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def _reset_speech(self) -> None:
        self._triggered = False
        self._start = 0  # first sample of the current speech (unpadded)
        self._silence_from: Optional[int] = None  # start of the silence now running inside speech
        self._pause_end: Optional[int] = None  # last inner pause >= 98 ms: where a long utterance may be cut
        self._resume: Optional[int] = None  # where speech resumed after that pause

    # ---- public API ---------------------------------------------------------------
    def push(self, pcm: np.ndarray) -> list[Utterance]:
        """Feed mono float32 16 kHz samples (any length); returns utterances that ended."""
        pcm = validate_waveform(pcm, "pcm")
        data = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        full = data.size - data.size % CHUNK
        for i in range(0, full, CHUNK):
            self._step(np.array(data[i : i + CHUNK], dtype=np.float32))
        self._pending = np.array(data[full:], dtype=np.float32)
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Utterance]:
        """End of stream: score the remainder and emit the utterance still open.

        The model state is reset, so a later push starts fresh (the timeline continues).
        """
        total = self._n + self._pending.size
        if self._pending.size:
            chunk = np.zeros(CHUNK, dtype=np.float32)
            chunk[: self._pending.size] = self._pending
            self._step(chunk)
            self._pending = np.zeros(0, dtype=np.float32)
        if self._triggered:
            end = min(self._silence_from if self._silence_from is not None else total, total)
            if end - self._start >= self._min_speech:
                self._close(self._start, end, pad_end=True)
        if self._closing is not None:
            self._closing.end = min(self._closing.end, total)
            self._finish(force=True)
        self._reset_speech()
        self._reset_model()
        self._n = self._buf_start = total
        self._chunks.clear()
        out, self._out = self._out, []
        return out

    @property
    def speaking(self) -> bool:
        """Whether speech is going on now (an utterance has started and not yet ended)."""
        return bool(self._triggered)

    def open_speech_seconds(self) -> Optional[float]:
        """Seconds of the speech still going on, start padding included (cheap); None in silence."""
        if not self.speaking:
            return None
        return (self._open_end() - self._open_begin()) / SAMPLE_RATE

    def open_speech(self) -> Optional[tuple[float, np.ndarray]]:
        """The speech still going on: (media start, its audio so far with the start padding); None in silence."""
        if not self.speaking:
            return None
        begin = self._open_begin()
        return self.time_offset_s + begin / SAMPLE_RATE, self._slice(begin, self._open_end())

    def _open_end(self) -> int:
        """Where the open speech ends so far: now, or the end padding after a silence that has begun.

        An interim taken while the VAD waits out a pause then covers no more
        than the final would if the speech ended there.
        """
        if self._silence_from is None:
            return self._n
        return min(self._n, self._silence_from + self._pad)

    def _open_begin(self) -> int:
        """Sample index where the open speech starts: its padding, clipped to the last cut and the buffer."""
        return max(self._start - self._pad, self._last_end, self._buf_start)

    @property
    def position_s(self) -> float:
        """Media time up to which audio has been pushed."""
        return self.time_offset_s + (self._n + self._pending.size) / SAMPLE_RATE

    # ---- per-chunk state machine ----------------------------------------------------
    def _prob(self, chunk: np.ndarray) -> float:
        x = np.concatenate([self._context, chunk])[None, :]
        probs, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = chunk[-CONTEXT:].copy()
        return float(np.asarray(probs).ravel()[0])

    def _step(self, chunk: np.ndarray) -> None:
        prob = self._prob(chunk)
        s = self._n
        self._chunks.append(chunk)
        self._n = e = s + CHUNK
        if prob >= self.cfg.threshold:
            if self._silence_from is not None:
                if s - self._silence_from >= self._min_pause:
                    self._pause_end, self._resume = self._silence_from, s
                self._silence_from = None
            if not self._triggered:
                self._triggered = True
                self._start = s
                self._pause_end = self._resume = None
                c = self._closing
                if c is not None:  # new speech inside the last one's end padding: split the gap
                    c.end = min(c.end, max(c.speech_end, (c.speech_end + s) // 2))
        elif self._triggered and prob < self.cfg.neg_threshold:
            if self._silence_from is None:
                self._silence_from = s
            if e - self._silence_from >= self._min_silence:
                if self._silence_from - self._start >= self._min_speech:
                    self._close(self._start, self._silence_from, pad_end=True)
                self._reset_speech()
        if self._triggered and e - self._start >= self._max_speech:
            self._cut(e)
        self._finish()
        self._trim()

    def _cut(self, e: int) -> None:
        """Speech reached the length limit: end it at a late enough pause if it had one, else right here.

        A pause in the first half is not used: it would leave a fragment too short to mean much.
        """
        half = self._start + self._max_speech // 2
        log.debug("speech from %.2f s reached max_utterance_s; cutting", self._start / SAMPLE_RATE)
        if self._silence_from is not None and e - self._silence_from >= self._min_pause:
            self._close(self._start, self._silence_from, pad_end=True, cut=True)
            self._reset_speech()
        elif self._pause_end is not None and self._resume is not None and self._pause_end >= half:
            mid = (self._pause_end + self._resume) // 2
            self._close(self._start, self._pause_end, pad_end=True, cut=True, limit=mid)
            self._start = self._resume
            self._pause_end = self._resume = None
        else:
            self._close(self._start, e, pad_end=False, cut=True)
            self._start = e
            self._silence_from = None

    def _close(self, start: int, end: int, pad_end: bool, cut: bool = False, limit: Optional[int] = None) -> None:
        self._finish(force=True)
        begin = max(start - self._pad, self._last_end, self._buf_start)
        stop = end + self._pad if pad_end else end
        if limit is not None:
            stop = max(end, min(stop, limit))
        self._closing = _Closing(start=begin, speech_end=end, end=stop, cut=cut)

    def _finish(self, force: bool = False) -> None:
        """Emit the waiting utterance once its end padding has arrived (or now, if forced)."""
        c = self._closing
        if c is None or not (force or self._n >= c.end):
            return
        end = min(c.end, self._n)
        self._out.append(
            Utterance(
                start_s=self.time_offset_s + c.start / SAMPLE_RATE,
                end_s=self.time_offset_s + end / SAMPLE_RATE,
                audio=self._slice(c.start, end),
                cut=c.cut,
            )
        )
        self._last_end = max(self._last_end, end)
        self._closing = None

    def _slice(self, start: int, end: int) -> np.ndarray:
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        buf = np.concatenate(list(self._chunks)) if self._chunks else np.zeros(0, dtype=np.float32)
        return buf[start - self._buf_start : end - self._buf_start].copy()

    def _trim(self) -> None:
        """Drop audio no utterance can still need (keeps memory bounded by max_utterance_s)."""
        keep = self._n - self._pad - CHUNK
        if self._triggered:
            keep = min(keep, self._start - self._pad)
        if self._closing is not None:
            keep = min(keep, self._closing.start)
        while self._chunks and self._buf_start + CHUNK <= keep:
            self._chunks.popleft()
            self._buf_start += CHUNK


def segment_clip(
    wave: np.ndarray,
    cfg: Optional[VADConfig] = None,
    model: Any = None,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
) -> list[Utterance]:
    """Cut a whole clip into utterances exactly as a live session would, with times relative to the clip.

    Training reads clips (a RAVDESS file, a MELD line) while the service reads
    VAD-cut segments of a stream; features computed on the whole clip (leading
    and trailing silence included) are not the ones the service computes. The
    clip is fed as a stream would carry it: after `lead_s` of silence and
    followed by `tail_s` (zeros, as between the clips of a joined file), so that
    the end-of-speech hangover and padding behave as they do live; padding
    may reach into that silence, as it would in the stream.
    """
    wave = validate_waveform(wave, "wave")
    seg = VADSegmenter(cfg, time_offset_s=-lead_s, model=model)
    lead = np.zeros(int(round(lead_s * SAMPLE_RATE)), dtype=np.float32)
    tail = np.zeros(int(round(tail_s * SAMPLE_RATE)), dtype=np.float32)
    out = seg.push(np.concatenate([lead, wave, tail]))
    out += seg.flush()
    return out


def served_audio(wave: np.ndarray, cfg: Optional[VADConfig] = None, model: Any = None) -> np.ndarray:
    """The audio the service would encode for a one-utterance clip: its longest VAD segment.

    Empty when the VAD finds no speech (the service would emit no utterance).
    """
    segments = segment_clip(wave, cfg, model)
    if not segments:
        return np.zeros(0, dtype=np.float32)
    return max(segments, key=lambda u: u.audio.size).audio
