"""The in-process Backend: the recognizer's workers as plain objects in this process, no Ray.

The same worker classes the Ray actors wrap (magtkd_stream/streaming/workers.py), each
with its own micro-batcher thread, called directly on the caller's event
loop. It starts in seconds instead of Ray's tens of seconds and needs no
cluster, which suits `magtkd-stream run --backend local`, the Python API and
tests; it has no fault isolation (a crashed model ends the process) and
scales only within one process, which is what the Ray pipeline is for.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from magtkd_stream.streaming.backend import BackendInfo, Vectors, audio_may_come_from_asr, backend_info
from magtkd_stream.model.checkpoint import checkpoint_path
from magtkd_stream.config import Config
from magtkd_stream.names import MODALITIES
from magtkd_stream.config import StreamConfig
from magtkd_stream.streaming.workers import ASRWorker, EncoderWorker, FusionWorker

log = logging.getLogger(__name__)


class LocalBackend:
    """ASR, encoders and fusion in this process; implements magtkd_stream.streaming.backend.Backend."""

    def __init__(self, cfg: Config, stream: StreamConfig, workers: dict[str, Any], info: BackendInfo) -> None:
        self.cfg = cfg
        self.stream = stream
        self.workers = workers
        self.info = info

    @classmethod
    async def start(cls, cfg: Config, *, stream: Optional[StreamConfig] = None, asr_script: Any = None,
                    warmup: bool = True, threads: Optional[int] = None) -> "LocalBackend":
        """Load every model (and warm each up with a real call), as Pipeline.start does with actors.

        `threads`: torch / CTranslate2 threads for all workers together (default:
        every core); `asr_script` feeds a scripted ASR (tiny profile).
        """
        import torch

        stream = stream or cfg.stream
        ckpt = checkpoint_path(cfg)  # a bad checkpoint reference fails here, before any model loads
        t0 = time.perf_counter()
        n = max(1, threads or os.cpu_count() or 1)
        wait_ms, max_batch = stream.batch_wait_ms, stream.max_batch
        workers: dict[str, Any] = {
            "asr": ASRWorker(cfg, threads=n, wait_ms=wait_ms, max_batch=max_batch, script=asr_script)
        }
        audio_from_asr = audio_may_come_from_asr(cfg) and workers["asr"].dim() > 0
        for m in MODALITIES:
            if m == "audio" and audio_from_asr:
                continue
            workers[m] = EncoderWorker(m, cfg, ckpt, threads=n, num_gpus=stream.resources(m).num_gpus,
                                       wait_ms=wait_ms, max_batch=max_batch)
        dims = {m: workers[m].dim() for m in MODALITIES if m in workers}
        if audio_from_asr:
            dims["audio"] = workers["asr"].dim()
        workers["fusion"] = FusionWorker(cfg, dims, ckpt, window=stream.window, threads=n, wait_ms=wait_ms,
                                         max_batch=max_batch)
        torch.set_num_threads(n)  # each worker pinned its own count; in one process they share torch's pool
        info = backend_info(workers["fusion"].info(), audio_from_asr=audio_from_asr, dims=dims,
                            crops=workers["video"].crops_faces(), stream=stream)
        backend = cls(cfg, stream, workers, info)
        if warmup:
            for w in workers.values():
                await w.warmup()
        log.info("local backend up in %.1f s: %s (model %s, window %d)", time.perf_counter() - t0,
                 ", ".join(workers), info.model, info.window)
        return backend

    def has(self, kind: str) -> bool:
        return kind in self.workers

    async def transcribe(self, audio: np.ndarray) -> Any:
        return await self.workers["asr"].transcribe(audio)

    async def encode(self, modality: str, items: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        return await self.workers[modality].encode(list(items))

    async def crop(self, frame: np.ndarray, session: str) -> Optional[np.ndarray]:
        return await self.workers["video"].crop(frame, session)

    async def fuse(self, session: str, speaker: str, vectors: Vectors) -> dict[str, Any]:
        return await self.workers["fusion"].fuse(session, speaker, vectors)

    async def peek(self, session: str, speaker: str, vectors: Vectors) -> dict[str, Any]:
        return await self.workers["fusion"].peek(session, speaker, vectors)

    async def end_session(self, session: str) -> None:
        await self.workers["fusion"].end_session(session)

    def stop(self) -> None:
        """Release the workers' batcher threads."""
        for w in self.workers.values():
            w.batcher.close()
