"""What the recognizer needs from the models that serve it: the Backend protocol and its facts.

The per-session algorithm (magtkd_stream/streaming/recognizer.py) is written against
this protocol only, so it runs unchanged over the Ray actors (actors/pipeline.py),
over plain in-process workers (magtkd_stream/streaming/local_backend.py), and over a
fake in tests. Every call is a coroutine; a backend may batch concurrent calls
from many sessions. A call that fails because the serving process died or
timed out raises BackendError (its message names what failed); the recognizer
then fails that utterance only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from magtkd_stream.config import Config
from magtkd_stream.config import StreamConfig


class BackendError(RuntimeError):
    """A model call failed for a reason outside the input (a worker died, restarted or timed out)."""


@dataclass(frozen=True)
class BackendInfo:
    """What the running backend is: the facts the recognizer, the gateway and the reports need."""

    model: str  # the checkpoint's id (magtkd_stream.model.checkpoint.model_id), or "untrained"
    labels: tuple[str, ...]
    window: int  # utterances of context fusion keeps per session
    trained: bool
    audio_from_asr: bool  # the ASR's Whisper pass yields the audio vector: no audio encoder
    encoder_dims: dict[str, int] = field(default_factory=dict)
    crop_on_arrival: bool = False  # faces are cropped as frames arrive, not at the utterance's end


def audio_may_come_from_asr(cfg: Config) -> bool:
    """Whisper audio vectors of the ASR's own model come with every transcript (if the ASR yields them)."""
    audio = cfg.encoders.audio
    return audio.kind == "whisper" and audio.model == cfg.encoders.asr.model


def backend_info(fusion: Mapping[str, Any], *, audio_from_asr: bool, dims: Mapping[str, int], crops: bool,
                 stream: StreamConfig) -> BackendInfo:
    """BackendInfo from the fusion worker's `info()` and what the encoders reported."""
    return BackendInfo(model=str(fusion["model"]), labels=tuple(fusion["labels"]), window=int(fusion["window"]),
                       trained=bool(fusion["trained"]), audio_from_asr=audio_from_asr, encoder_dims=dict(dims),
                       crop_on_arrival=bool(crops) and stream.crop_fps > 0)


Vectors = Mapping[str, Optional[np.ndarray]]


@runtime_checkable
class Backend(Protocol):
    """The models behind a Recognizer. `fuse` and `peek` keep per-session state (the MAGT window)."""

    cfg: Config
    stream: StreamConfig
    info: BackendInfo

    def has(self, kind: str) -> bool:
        """Whether a worker of `kind` (asr, text, audio, video, fusion) serves this backend."""

    async def transcribe(self, audio: np.ndarray) -> Any:
        """An ASRResult (text, and the Whisper audio vector when the profile uses it) of one utterance."""

    async def encode(self, modality: str, items: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim), present (n,)) of TextInput / AudioInput / VideoInput items."""

    async def crop(self, frame: np.ndarray, session: str) -> Optional[np.ndarray]:
        """The face of one BGR frame (None: no face), tracked per session; only when info.crop_on_arrival."""

    async def fuse(self, session: str, speaker: str, vectors: Vectors) -> dict[str, Any]:
        """Push one utterance into the session's window: {"probs": {label: p}, "modalities": {m: probs|None}}."""

    async def peek(self, session: str, speaker: str, vectors: Vectors) -> dict[str, Any]:
        """What `fuse` would answer for an utterance still being spoken, without pushing it."""

    async def end_session(self, session: str) -> None:
        """Forget the session's window."""
