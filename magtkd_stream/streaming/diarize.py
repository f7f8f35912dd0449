"""Online diarization: which voice speaks each utterance of a session, decided causally.

A replayed recording or a room microphone brings several people into one
session. Without telling them apart, the prompt, MAGT's speaker embedding and
the per-speaker normaliser treat everyone as one person: one speaker's voice
shifts the running mean another is normalised with. Here every utterance's
speaker embedding (the GE2E encoder that ships inside the resemblyzer wheel)
is compared with the speakers heard so far in the session, in utterance
order, and joins the most similar one or opens a new one. A label, once
given, is never revised: events already sent stay true.

One VAD segment may hold two voices (an answer that follows without a pause).
A long segment's partial embeddings (1.6 s windows) are compared before and
after every candidate boundary; where the two sides are least alike, below
`split_threshold`, and do not both match one speaker already heard, the
segment is cut in two there, and each piece becomes an utterance of its own.
"""

from __future__ import annotations

import logging
import string
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from magtkd_stream.config import DiarizeConfig
from magtkd_stream.names import SAMPLE_RATE

log = logging.getLogger(__name__)

SPLIT_RATE = 2.0  # partial embeddings per second of a segment searched for a change of voice
MIN_PARTIALS_A_SIDE = 2  # a side of a change needs this many partial embeddings of its own


@dataclass
class Piece:
    """A stretch of one segment spoken by one voice: samples [start, end)."""

    start: int
    end: int


def change_point(partials: np.ndarray) -> tuple[Optional[int], float]:
    """(k, similarity): the boundary k (the second side starts at partial k) where the mean embeddings before and
    after are least alike, and their cosine similarity; (None, 1.0) with too few partials for two sides."""
    n = len(partials)
    best: tuple[Optional[int], float] = (None, 1.0)
    for k in range(MIN_PARTIALS_A_SIDE, n - MIN_PARTIALS_A_SIDE + 1):
        left, right = _unit(partials[:k].mean(0)), _unit(partials[k:].mean(0))
        sim = float(left @ right)
        if sim < best[1]:
            best = (k, sim)
    return best


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-8)).astype(np.float32)


class SpeakerEmbedder:
    """Unit-length speaker embeddings of 16 kHz mono speech (resemblyzer's VoiceEncoder, on the CPU).

    One instance serves every session; calls are serialised because the
    encoder's LSTM keeps no per-call state but torch modules are not promised
    to be safe under concurrent use.
    """

    def __init__(self, model: Any = None) -> None:
        if model is None:
            try:
                from resemblyzer import VoiceEncoder
            except ImportError as exc:  # pragma: no cover - a pinned dependency
                raise RuntimeError("diarization needs the resemblyzer package (pip install resemblyzer)") from exc
            model = VoiceEncoder("cpu", verbose=False)
        self.model = model
        self._lock = threading.Lock()
        # The first embedding compiles librosa's kernels (about a second): pay it at start, not on an utterance.
        self(np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE).astype(np.float32))

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        from resemblyzer import preprocess_wav

        wav = np.asarray(audio, dtype=np.float32)
        prepared = preprocess_wav(wav, source_sr=SAMPLE_RATE)  # volume to -30 dBFS, long pauses cut
        if prepared.size < SAMPLE_RATE // 4:  # the trimming found almost no voice: use the segment as it is
            prepared = wav
        with self._lock:
            emb = np.asarray(self.model.embed_utterance(prepared), dtype=np.float32)
        return _unit(emb)

    def partials(self, audio: np.ndarray, rate: float = SPLIT_RATE) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Unit embeddings of 1.6 s windows, `rate` per second, over the segment as it is (volume normalised, no
        pause trimmed, so the windows' sample spans are the segment's own)."""
        from resemblyzer.audio import normalize_volume
        from resemblyzer.hparams import audio_norm_target_dBFS

        wav = normalize_volume(np.asarray(audio, dtype=np.float32), audio_norm_target_dBFS, increase_only=True)
        with self._lock:
            _, parts, slices = self.model.embed_utterance(wav, return_partials=True, rate=rate)
        parts = np.asarray(parts, dtype=np.float32)
        parts /= np.maximum(np.linalg.norm(parts, axis=1, keepdims=True), 1e-8)
        return parts, [(int(s.start), min(int(s.stop), len(wav))) for s in slices]


def speaker_labels(first: str, count: int) -> list[str]:
    """Labels for up to `count` speakers: the alphabet on from a one-letter name, else "Ann", "Ann 2", ..."""
    if len(first) == 1 and first in string.ascii_uppercase:
        start = string.ascii_uppercase.index(first)
        letters = string.ascii_uppercase[start:] + string.ascii_uppercase[:start]
        return list(letters[:count])
    return [first] + [f"{first} {k}" for k in range(2, count + 1)]


class OnlineDiarizer:
    """One session's speakers: a running mean embedding per speaker, labels handed out in order of appearance."""

    def __init__(self, cfg: DiarizeConfig, embedder: Callable[[np.ndarray], np.ndarray],
                 first_label: str = "A") -> None:
        self.cfg = cfg
        self.embed = embedder
        # the client's names first, in order of appearance; then made-up labels that collide with none of them
        generated = [x for x in speaker_labels(first_label, cfg.max_speakers + len(cfg.names)) if x not in cfg.names]
        self.labels = (list(cfg.names) + generated)[: cfg.max_speakers]
        self._sums: list[np.ndarray] = []  # per speaker, the sum of its embeddings (its direction is the centroid)
        self._lock = threading.Lock()  # assign (the VAD thread) and peek (an interim) may overlap

    @property
    def speakers(self) -> int:
        return len(self._sums)

    def assign(self, audio: np.ndarray) -> str:
        """The speaker label of one utterance's audio (a speaker's mean takes in only confident matches)."""
        seconds = len(audio) / SAMPLE_RATE
        emb = self.embed(audio)
        with self._lock:
            if not self._sums:
                return self._open(emb)
            sims = _similarities(self._sums, emb)
            best = int(np.argmax(sims))
            similar = float(sims[best]) >= self.cfg.threshold
            if not similar and seconds >= self.cfg.min_new_s and len(self._sums) < self.cfg.max_speakers:
                return self._open(emb)
            if similar:  # a doubtful match (too short to open a speaker, or no room) leaves the mean alone
                self._sums[best] = self._sums[best] + emb
            return self.labels[best]

    def split(self, audio: np.ndarray) -> list[Piece]:
        """The segment's pieces, one per voice: two when the voice changes inside it, else the whole segment.

        Only segments of at least split_min_s are searched; each piece must last min_new_s. Nothing is
        changed: each piece's speaker is assigned later from its own embedding (assign), computed the way
        the clustering threshold was chosen (pauses trimmed), not from the partial windows searched here.
        """
        whole = [Piece(0, len(audio))]
        cfg = self.cfg
        if not cfg.split or len(audio) < cfg.split_min_s * SAMPLE_RATE or not hasattr(self.embed, "partials"):
            return whole
        parts, spans = self.embed.partials(audio)
        k, sim = change_point(parts)
        if k is None or sim >= cfg.split_threshold:
            return whole
        cut = (spans[k][0] + spans[k - 1][1]) // 2  # the middle of the windows' overlap around the boundary
        if min(cut, len(audio) - cut) < cfg.min_new_s * SAMPLE_RATE:
            return whole
        left, right = _unit(parts[:k].mean(0)), _unit(parts[k:].mean(0))
        with self._lock:
            sums = list(self._sums)
        if sums:  # both sides like one speaker already heard: that person's voice moved, no change of speaker
            sims = _similarities(sums, np.stack([left, right]).T).T  # (2, speakers)
            best = sims.argmax(1)
            if best[0] == best[1] and (sims[:, best[0]] >= cfg.threshold).all():
                return whole
        log.debug("voice changes %.2f s into a %.2f s segment (similarity %.2f)", cut / SAMPLE_RATE,
                  len(audio) / SAMPLE_RATE, sim)
        return [Piece(0, cut), Piece(cut, len(audio))]

    def peek(self, audio: np.ndarray) -> str:
        """The label the speech so far would most likely get, changing nothing (for interim events)."""
        if not self._sums:
            return self.labels[0]
        emb = self.embed(audio)
        with self._lock:
            sums = list(self._sums)
        return self.labels[int(np.argmax(_similarities(sums, emb)))]

    def _open(self, emb: np.ndarray) -> str:
        self._sums.append(emb.copy())
        label = self.labels[len(self._sums) - 1]
        log.debug("new speaker %s", label)
        return label


def _similarities(sums: list[np.ndarray], emb: np.ndarray) -> np.ndarray:
    """Cosine similarity of a unit embedding (or the columns of a (dim, n) matrix) to each speaker's centroid."""
    centroids = np.stack([s / max(float(np.linalg.norm(s)), 1e-8) for s in sums])
    return centroids @ emb
