"""The recognizer's model workers: ASR, utterance encoders and MAGT fusion, as plain async classes.

Both backends run these same classes: the Ray pipeline (actors/pipeline.py)
wraps each with ray.remote(...).options(resources from the config), and the
in-process backend (magtkd_stream/streaming/local_backend.py) calls them directly, so
what is served is the same code either way. Every worker batches concurrent requests from all sessions with a
MicroBatcher (short bounded wait) and runs its model on one thread whose
torch / CTranslate2 thread count comes from the config.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from magtkd_stream.streaming.batching import MicroBatcher
from magtkd_stream.config import Config
from magtkd_stream.names import SAMPLE_RATE, UNTRAINED_MODEL_ID

log = logging.getLogger(__name__)

MAX_TRACKED_STREAMS = 1024  # face trackers kept by a video actor; the least recently used goes first

WARMUP_SESSION = "__warmup__"


def _pin_threads(threads: int, opencv: bool = False) -> None:
    """Torch (and OpenCV, in the actor that detects faces) use `threads` each: actors share the
    cores, and a library that starts one thread per core in every actor makes them wait on each other."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    if opencv:
        import cv2

        cv2.setNumThreads(max(1, int(threads)))


def _where() -> dict[str, Any]:
    """Which process serves an actor, for health reports and per-actor CPU accounting (actors/bench.py)."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


class ASRWorker:
    """Speech recognizer actor: faster-whisper (its pooled encoder states are the lite audio vector) or scripted."""

    def __init__(
        self, cfg: Config, threads: int = 1, wait_ms: float = 10.0, max_batch: int = 16, script: Any = None
    ) -> None:
        from magtkd_stream.streaming.asr import build_asr

        _pin_threads(threads)
        self.cfg = cfg
        self.asr = build_asr(cfg.encoders.asr, script=script, cpu_threads=threads)
        self.batcher = MicroBatcher(self.asr.transcribe_batch, wait_ms / 1000, max_batch, "asr")

    def dim(self) -> int:
        """Width of the audio vector ASR yields (0: none; then audio has its own encoder)."""
        return int(getattr(self.asr, "dim", 0) or 0)

    async def transcribe(self, waveform: np.ndarray) -> Any:
        """ASRResult of one utterance, batched with concurrent calls from other sessions."""
        return (await self.batcher.submit([waveform]))[0]

    async def transcribe_batch(self, waveforms: Sequence[np.ndarray]) -> list[Any]:
        return await self.batcher.submit(list(waveforms))

    async def warmup(self) -> dict[str, Any]:
        """A real pass (audible noise for Whisper; silence for a scripted ASR, which keeps its script intact)."""
        from magtkd_stream.streaming.asr import WhisperASR

        t0 = time.perf_counter()
        if isinstance(self.asr, WhisperASR):
            noise = np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE).astype(np.float32)
            await self.batcher.submit([np.clip(noise, -1, 1)])
        else:
            await self.batcher.submit([np.zeros(SAMPLE_RATE, dtype=np.float32)])
        return {"warmup_ms": (time.perf_counter() - t0) * 1e3}

    async def ping(self) -> dict[str, Any]:
        return {"ok": True, "batches": self.batcher.batches, "items": self.batcher.items, **_where()}


class EncoderWorker:
    """One modality's backbone encoder (any Encoder from build_encoder) with trained weights if the checkpoint has them."""

    def __init__(
        self,
        modality: str,
        cfg: Config,
        checkpoint: Optional[str] = None,
        threads: int = 1,
        num_gpus: float = 0.0,
        wait_ms: float = 10.0,
        max_batch: int = 16,
    ) -> None:
        import torch

        from magtkd_stream.encoders import build_encoder

        _pin_threads(threads)
        torch.manual_seed(cfg.seed)  # random-init encoders (tiny profile) come out the same after a restart
        self.modality = modality
        self.encoder = build_encoder(modality, cfg)
        if checkpoint is not None:
            self._load_trained(checkpoint)
        self.encoder.to(_device(num_gpus)).eval()
        self._trackers: dict[str, Any] = {}  # stream -> FaceTracker, least recently used first
        if self.crops_faces():
            _pin_threads(threads, opencv=True)  # only this actor loads OpenCV
        self.batcher = MicroBatcher(self._encode_batch, wait_ms / 1000, max_batch, f"{modality}-encoder")

    def _load_trained(self, path: str) -> None:
        from magtkd_stream.model.checkpoint import load_checkpoint

        state = load_checkpoint(path).state_dict(f"{self.modality}.encoder")
        if not state:
            return  # a frozen backbone: the checkpoint holds only heads
        result = self.encoder.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(
                f"checkpoint {path}: {len(result.unexpected_keys)} {self.modality} encoder tensors do not fit the "
                f"configured encoder (first: {result.unexpected_keys[0]}); is it from another profile?"
            )
        log.info("%s encoder: %d fine-tuned tensors loaded from %s", self.modality, len(state), path)

    def dim(self) -> int:
        return int(self.encoder.dim)

    def crops_faces(self) -> bool:
        """Whether `crop` works: the encoder can cut a face out of a frame ahead of its utterance."""
        return callable(getattr(self.encoder, "crop_frame", None))

    async def crop(self, frame: np.ndarray, stream: Optional[str] = None) -> Optional[np.ndarray]:
        """The face of one BGR frame as a gray crop (None: no face), for the encoder's later `encode`.

        Called as frames arrive, so face detection overlaps the speech instead of
        competing with ASR once the utterance has ended. Frames of one `stream`
        (a session) share a FaceTracker, so most are searched only near its last face.
        """
        if not self.crops_faces():
            raise TypeError(f"the {self.modality} encoder {type(self.encoder).__name__} does not crop faces")
        tracker = None if stream is None else self._tracker(stream)
        # model thread, after waiting batches; one thread, so a stream's tracker is used by one frame at a time
        return await self.batcher.background(self.encoder.crop_frame, frame, tracker)

    def _tracker(self, stream: str) -> Any:
        from magtkd_stream.encoders.face import FaceTracker

        tracker = self._trackers.pop(stream, None) or FaceTracker()
        self._trackers[stream] = tracker  # most recently used last
        while len(self._trackers) > MAX_TRACKED_STREAMS:
            self._trackers.pop(next(iter(self._trackers)))
        return tracker

    def _encode_batch(self, items: list[Any]) -> list[tuple[np.ndarray, bool]]:
        out = self.encoder.encode(items)
        vectors = out.vectors.detach().float().cpu().numpy()
        present = out.present.detach().cpu().numpy().astype(bool)
        return [(vectors[i], bool(present[i])) for i in range(len(items))]

    async def encode(self, items: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) float32, present (n,) bool) for TextInput / AudioInput / VideoInput items."""
        results = await self.batcher.submit(list(items))
        if not results:
            return np.zeros((0, self.dim()), np.float32), np.zeros(0, bool)
        return np.stack([v for v, _ in results]), np.array([p for _, p in results], dtype=bool)

    async def warmup(self) -> dict[str, Any]:
        from magtkd_stream.encoders import AudioInput, TextInput, VideoInput

        dummy: Any
        if self.modality == "text":
            dummy = TextInput("A", "Hello there, how are you?", [("B", "Fine, thanks.")])
        elif self.modality == "audio":
            dummy = AudioInput(np.clip(np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE), -1, 1).astype(np.float32))
        else:
            dummy = VideoInput([np.full((96, 96, 3), 128, dtype=np.uint8)] * 2)
        t0 = time.perf_counter()
        await self.encode([dummy])
        return {"warmup_ms": (time.perf_counter() - t0) * 1e3}

    async def ping(self) -> dict[str, Any]:
        return {"ok": True, "batches": self.batcher.batches, "items": self.batcher.items, **_where()}


class FusionWorker:
    """Trained heads + MAGT with one SessionWindow per session: predicts each new utterance causally.

    Without a checkpoint the heads and MAGT are randomly initialised (a loud
    warning; model id "untrained"), so events still flow end to end.
    """

    def __init__(
        self,
        cfg: Config,
        encoder_dims: Mapping[str, int],
        checkpoint: Optional[str] = None,
        window: Optional[int] = None,  # None: the checkpoint's magt.window; 0: no limit (magt.max_len)
        threads: int = 1,
        wait_ms: float = 10.0,
        max_batch: int = 16,
    ) -> None:
        import torch

        from magtkd_stream.model.fusion import FusionModel
        from magtkd_stream.labels import label_set

        _pin_threads(threads)
        if checkpoint is not None:
            self.model = FusionModel.load(checkpoint, cfg, encoder_dims)
            self.labels = list(self.model.labels)
            self.model_id = self.model.model_id
        else:
            log.warning(
                "!!! NO CHECKPOINT: fusion heads and MAGT are RANDOMLY INITIALISED; predictions are meaningless "
                "(model id %r). Set `checkpoint` to a trained file for real results. !!!", UNTRAINED_MODEL_ID,
            )
            torch.manual_seed(cfg.seed)
            self.labels = list(label_set(cfg.labels))
            self.model = FusionModel(cfg, dict(encoder_dims), len(self.labels)).eval()
            self.model_id = UNTRAINED_MODEL_ID
        magt = self.model.cfg.magt
        # None: as trained. 0 everywhere means "no limit"; a stream has no end, so the position table bounds it.
        self.window = (magt.window if window is None else window) or magt.max_len
        self.max_speakers = magt.max_speakers
        self.windows: dict[str, Any] = {}
        self.batcher = MicroBatcher(self.fuse_batch, wait_ms / 1000, max_batch, "fusion")

    def info(self) -> dict[str, Any]:
        return {"model": self.model_id, "labels": list(self.labels), "window": self.window,
                "trained": self.model_id != UNTRAINED_MODEL_ID}

    def _window(self, session: str) -> Any:
        from magtkd_stream.model.fusion import SessionWindow

        if session not in self.windows:
            self.windows[session] = SessionWindow(self.window, self.max_speakers, self.model.session_normalizers())
        return self.windows[session]

    def fuse_batch(
        self, items: list[tuple[str, str, dict[str, Optional[np.ndarray]], bool]]
    ) -> list[dict[str, Any]]:
        """Items (session, speaker, backbone vectors, commit) -> {"probs", "magt", "modalities"} each, in order.

        "probs" is the final prediction, "magt" MAGT's own before the decision layer (training fits that layer
        on it), "modalities" each head's own probabilities (None when absent). Called by the batcher's thread;
        training replays recorded sessions through it directly.
        """
        import torch

        from magtkd_stream.names import MODALITIES

        feats: list[dict[str, Optional[np.ndarray]]] = [{} for _ in items]
        mprobs: list[dict[str, Optional[dict[str, float]]]] = [{} for _ in items]
        hprobs: list[dict[str, Optional[np.ndarray]]] = [{} for _ in items]
        for m in MODALITIES:
            rows = [i for i, (_, _, vecs, _) in enumerate(items) if vecs.get(m) is not None]
            for i in range(len(items)):
                feats[i][m] = None
                mprobs[i][m] = None
                hprobs[i][m] = None
            if not rows:
                continue
            # in item order, so a session's normaliser sees its utterances as they were spoken
            x = torch.as_tensor(np.stack([
                self._window(items[i][0]).normalize(items[i][1], m, np.asarray(items[i][2][m], dtype=np.float32),
                                                    items[i][3])
                for i in rows]))
            f, logits = self.model.head(m, x)
            probs = logits.softmax(-1).numpy()
            for j, i in enumerate(rows):
                feats[i][m] = f[j].numpy().copy()
                mprobs[i][m] = self._named(probs[j])
                hprobs[i][m] = probs[j]
        fused: list[Optional[np.ndarray]] = [None] * len(items)
        group: list[tuple[int, Any]] = []  # (item, the window MAGT reads for it)
        committed: set[str] = set()
        for i in range(len(items) + 1):
            # A session commits at most once per MAGT call, which keeps its utterances in order.
            if i == len(items) or (items[i][3] and items[i][0] in committed):
                for (k, _), p in zip(group, self.model.predict_last([w for _, w in group])):
                    fused[k] = p
                group, committed = [], set()
            if i < len(items):
                session, speaker, _, commit = items[i]
                window = self._window(session)
                if commit:
                    window.push(speaker, feats[i])
                    committed.add(session)
                else:
                    window = window.with_pending(speaker, feats[i])
                group.append((i, window))
        return [{"probs": self._named(self.model.decide(fused[i], hprobs[i])), "magt": self._named(fused[i]),
                 "modalities": mprobs[i]} for i in range(len(items))]

    def _named(self, probs: np.ndarray) -> dict[str, float]:
        p = np.asarray(probs, dtype=np.float64)
        p = p / p.sum()
        return {name: float(v) for name, v in zip(self.labels, p)}

    async def fuse(self, session: str, speaker: str, vectors: Mapping[str, Optional[np.ndarray]]) -> dict[str, Any]:
        """Push the utterance's backbone vectors into its session window; fused + per-modality probabilities.

        Returns {"probs": {label: p}, "modalities": {modality: {label: p} | None}}.
        """
        return (await self.batcher.submit([(session, speaker, dict(vectors), True)]))[0]

    async def peek(self, session: str, speaker: str, vectors: Mapping[str, Optional[np.ndarray]]) -> dict[str, Any]:
        """What `fuse` would return for an utterance still being spoken, without pushing it (interim events)."""
        return (await self.batcher.submit([(session, speaker, dict(vectors), False)]))[0]

    async def window_sizes(self) -> dict[str, int]:
        """Utterances held per session window (introspection for health and tests)."""
        return {name: len(w.items) for name, w in self.windows.items()}

    async def end_session(self, session: str) -> bool:
        """Forget a session's window; False if there was none."""
        return self.windows.pop(session, None) is not None

    async def warmup(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        dims = {m: h.proj.in_features for m, h in self.model.heads.items()}
        await self.fuse(WARMUP_SESSION, "A", {m: np.zeros(d, np.float32) for m, d in dims.items()})
        await self.end_session(WARMUP_SESSION)
        return {"warmup_ms": (time.perf_counter() - t0) * 1e3}

    async def ping(self) -> dict[str, Any]:
        return {"ok": True, "sessions": len(self.windows), "batches": self.batcher.batches,
                "items": self.batcher.items, **_where()}
