"""The pipeline builder: starts the recognizer's actors on Ray, warms them up, reports health, stops them.

Ray runs locally by default (ray.init with no address) or joins an existing
cluster given by an address or RAY_ADDRESS. Each actor kind gets its
resources and replica count from `stream.actors` in the config; Ray restarts
a crashed actor (max_restarts) but never retries a call (max_task_retries=0),
so the utterance that was in flight is reported failed instead of being
silently recomputed or dropped. `Pipeline.call` is the one way the sink talks
to actors: it picks a replica, waits out a restart with a short backoff, and
turns actor deaths and timeouts into ActorCallError. While calls are being
made, every actor is also pinged every `stream.watch_every_s`, so one that died
while idle is known to be restarting before the next utterance needs it: that
call waits for the restart instead of failing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from magtkd_stream.model.checkpoint import checkpoint_path
from magtkd_stream.streaming.workers import ASRWorker, EncoderWorker, FusionWorker
from magtkd_stream.streaming.backend import BackendError, BackendInfo, audio_may_come_from_asr, backend_info
from magtkd_stream.config import Config
from magtkd_stream.config import ActorResources, StreamConfig
from magtkd_stream.names import MODALITIES

log = logging.getLogger(__name__)

CONCURRENCY = 1000  # calls an async actor may hold at once; its batcher does the real queueing


class ActorCallError(BackendError):
    """An actor died, restarted, or timed out during a call; the message names the actor and the cause."""


@dataclass
class ActorSlot:
    """One actor replica and what the caller knows about its state."""

    name: str  # e.g. "text#0"
    kind: str  # asr, text, audio, video, fusion
    handle: Any
    suspect: bool = False  # a call failed: wait for the actor to answer again before the next one
    dead: bool = False  # restarts exhausted
    ready: Optional[asyncio.Task] = field(default=None, repr=False)
    probing: bool = False  # a watch ping is out


def _remote(cls: type, res: ActorResources, stream: StreamConfig) -> Any:
    return ray.remote(cls).options(
        **res.ray_options(),
        max_restarts=stream.max_restarts,
        max_task_retries=0,
        max_concurrency=CONCURRENCY,
    )


def init_ray(address: Optional[str] = None, log_to_driver: bool = False) -> bool:
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray; False when Ray was already up."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        # address="local": always a fresh local instance, never a `ray start` cluster
        # that happens to run on this machine (which would also reject num_cpus).
        ray.init(
            address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=log_to_driver
        )
    return True


PipelineInfo = BackendInfo  # the Ray pipeline's facts are a backend's facts


class Pipeline:
    """Handles to the running actors, grouped by kind, and the model facts the recognizer needs.

    Implements magtkd_stream.streaming.backend.Backend over `call`, so a Recognizer runs on the actors.
    """

    def __init__(self, cfg: Config, stream: StreamConfig, slots: dict[str, list[ActorSlot]], info: PipelineInfo,
                 owns_ray: bool) -> None:
        self.cfg = cfg
        self.stream = stream
        self.slots = slots
        self.info = info
        self.owns_ray = owns_ray
        self._turn: dict[str, int] = {k: 0 for k in slots}
        self._watcher: Optional[asyncio.Task] = None
        self.stopped = False

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        cfg: Config,
        address: Optional[str] = None,
        *,
        stream: Optional[StreamConfig] = None,
        asr_script: Any = None,
        warmup: bool = True,
        start_timeout_s: float = 600.0,
    ) -> "Pipeline":
        """Start Ray if needed, create every actor, wait until each answers a real dummy call.

        `asr_script` feeds a scripted ASR (tiny profile). Raises the actor's own
        error (e.g. a missing model or checkpoint) when one fails to start, and
        TimeoutError when Ray cannot place the actors (resources it does not have).
        """
        stream = stream or cfg.stream
        ckpt = checkpoint_path(cfg)  # a bad checkpoint reference fails here, before any actor starts
        owns = init_ray(address, stream.log_to_driver)
        t0 = time.perf_counter()
        wait_ms, max_batch = stream.batch_wait_ms, stream.max_batch
        slots: dict[str, list[ActorSlot]] = {}
        created: list[ActorSlot] = []

        def get(refs: Any) -> Any:
            try:
                return ray.get(refs, timeout=max(1.0, start_timeout_s - (time.perf_counter() - t0)))
            except GetTimeoutError:
                raise TimeoutError(
                    f"pipeline actors not ready after {start_timeout_s:g} s; the cluster has "
                    f"{ray.available_resources()} free, and stream.actors asks for "
                    f"{ {k: (r.num_cpus, r.num_gpus, r.replicas) for k, r in stream.actors.items()} } "
                    "(num_cpus, num_gpus, replicas): lower them or add resources"
                ) from None

        def make(kind: str, actor_cls: type, *args: Any, **kwargs: Any) -> list[ActorSlot]:
            res = stream.resources(kind)
            group = []
            for i in range(res.replicas):
                handle = _remote(actor_cls, res, stream).remote(*args, **kwargs)
                group.append(ActorSlot(f"{kind}#{i}", kind, handle))
            slots[kind] = group
            created.extend(group)
            return group

        try:
            def encoder(m: str) -> None:
                r = stream.resources(m)
                make(m, EncoderWorker, m, cfg, ckpt, threads=r.threads, num_gpus=r.num_gpus, wait_ms=wait_ms,
                     max_batch=max_batch)

            make("asr", ASRWorker, cfg, threads=stream.resources("asr").threads, wait_ms=wait_ms,
                 max_batch=max_batch, script=asr_script)
            maybe_from_asr = audio_may_come_from_asr(cfg)  # then no audio actor
            for m in ("text", "video") if maybe_from_asr else ("text", "video", "audio"):
                encoder(m)
            asr_dim = get(slots["asr"][0].handle.dim.remote())
            audio_from_asr = maybe_from_asr and asr_dim > 0
            if maybe_from_asr and not audio_from_asr:  # a scripted ASR yields no audio vectors
                encoder("audio")
            dims = {m: get(g[0].handle.dim.remote()) for m, g in slots.items() if m in MODALITIES}
            if audio_from_asr:
                dims["audio"] = asr_dim
            fr = stream.resources("fusion")
            make("fusion", FusionWorker, cfg, dims, ckpt, window=stream.window, threads=fr.threads, wait_ms=wait_ms,
                 max_batch=max_batch)
            fusion = get(slots["fusion"][0].handle.info.remote())
            crops = "video" in slots and get(slots["video"][0].handle.crops_faces.remote())
            if warmup:
                get([s.handle.warmup.remote() for s in created])
        except BaseException:
            for slot in created:
                ray.kill(slot.handle, no_restart=True)
            if owns:
                ray.shutdown()
            raise
        info = backend_info(fusion, audio_from_asr=audio_from_asr, dims=dims, crops=bool(crops), stream=stream)
        log.info("pipeline up in %.1f s: %s (model %s, window %d)", time.perf_counter() - t0,
                 ", ".join(s.name for s in created), info.model, info.window)
        return cls(cfg, stream, slots, info, owns)

    def stop(self) -> None:
        """Kill the actors (no restart); shut Ray down if this pipeline started it."""
        if self.stopped:
            return
        self.stopped = True
        for group in self.slots.values():
            for slot in group:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception as exc:  # already gone
                    log.debug("kill %s: %s", slot.name, exc)
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """{"ok": all alive, "model": ..., "actors": {name: {"state": "alive"|"unavailable"|"dead"|"timeout", ...}}}."""
        slots = [s for g in self.slots.values() for s in g]
        refs = [s.handle.ping.remote() for s in slots]
        actors: dict[str, Any] = {}
        for slot, ref in zip(slots, refs):
            t0 = time.perf_counter()
            try:
                reply = ray.get(ref, timeout=timeout_s)
                actors[slot.name] = {"state": "alive", "ping_ms": round((time.perf_counter() - t0) * 1e3, 2), **reply}
            except GetTimeoutError:
                actors[slot.name] = {"state": "timeout"}
            except ActorDiedError as exc:
                actors[slot.name] = {"state": "dead", "error": str(exc).splitlines()[0]}
            except RayActorError as exc:
                actors[slot.name] = {"state": "unavailable", "error": str(exc).splitlines()[0]}
        return {
            "ok": all(a["state"] == "alive" for a in actors.values()),
            "model": self.info.model,
            "window": self.info.window,
            "actors": actors,
        }

    async def health_async(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """health() without blocking an event loop (for the server)."""
        return await asyncio.to_thread(self.health, timeout_s)

    # ------------------------------------------------------------ the Backend protocol

    async def transcribe(self, audio: Any) -> Any:
        return await self.call("asr", "transcribe", audio)

    async def encode(self, modality: str, items: Any) -> Any:
        return await self.call(modality, "encode", list(items))

    async def crop(self, frame: Any, session: str) -> Any:
        return await self.call("video", "crop", frame, session, key=session)  # the session's face tracker

    async def fuse(self, session: str, speaker: str, vectors: Any) -> Any:
        return await self.call("fusion", "fuse", session, speaker, vectors, key=session)

    async def peek(self, session: str, speaker: str, vectors: Any) -> Any:
        return await self.call("fusion", "peek", session, speaker, vectors, key=session)

    async def end_session(self, session: str) -> None:
        await self.call("fusion", "end_session", session, key=session)

    # ------------------------------------------------------------ calls

    def has(self, kind: str) -> bool:
        return bool(self.slots.get(kind))

    def handles(self, kind: str) -> list[Any]:
        """The Ray actor handles of one kind (e.g. to kill one in a fault test)."""
        return [s.handle for s in self.slots.get(kind, [])]

    def _pick(self, kind: str, key: Optional[str]) -> ActorSlot:
        group = self.slots.get(kind)
        if not group:
            raise ActorCallError(f"no {kind} actor in this pipeline")
        if key is not None:  # stateful actors: a session always goes to the same replica
            return group[zlib.crc32(key.encode("utf-8")) % len(group)]
        i = self._turn[kind] % len(group)
        self._turn[kind] = i + 1
        return group[i]

    async def call(self, kind: str, method: str, *args: Any, key: Optional[str] = None) -> Any:
        """Call `method` on a `kind` actor; ActorCallError when the actor dies, is restarting too long, or times out."""
        self._watch()
        slot = self._pick(kind, key)
        if slot.dead:
            raise ActorCallError(f"{slot.name} is dead (Ray gave up restarting it)")
        if slot.suspect:
            await self._wait_ready(slot)
        ref = getattr(slot.handle, method).remote(*args)
        try:
            try:
                return await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.stream.call_timeout_s)
            except ActorUnavailableError as exc:
                if "is restarting" not in str(exc):
                    raise
                # Sent while Ray already knew the actor was restarting: it never ran. Wait, then send it once more.
                slot.suspect = True
                await self._wait_ready(slot)
                ref = getattr(slot.handle, method).remote(*args)
                return await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.stream.call_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            try:
                ray.cancel(ref)
            except Exception as exc:  # already finished or not cancellable: nothing to undo
                log.debug("cancel %s.%s: %s", slot.name, method, exc)
            raise ActorCallError(f"{slot.name}.{method} timed out after {self.stream.call_timeout_s:g} s") from None
        except RayActorError as exc:
            slot.suspect = True  # Ray restarts it (or declares it dead, which the next call finds out)
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ActorCallError(f"{slot.name} failed during {method}: {type(exc).__name__}: {cause}"[:500]) from None

    async def _wait_ready(self, slot: ActorSlot) -> None:
        """Wait (shared by every caller on this loop) until a suspect actor answers; ActorCallError if it is dead."""
        loop = asyncio.get_running_loop()
        if slot.ready is None or slot.ready.done() or slot.ready.get_loop() is not loop:
            slot.ready = loop.create_task(self._await_ready(slot))
        await asyncio.shield(slot.ready)
        if slot.dead:
            raise ActorCallError(f"{slot.name} is dead (Ray gave up restarting it)")

    def _watch(self) -> None:
        """Keep one watcher task per event loop that calls are made from."""
        loop = asyncio.get_running_loop()
        w = self._watcher
        if w is None or w.done() or w.get_loop() is not loop:
            self._watcher = loop.create_task(self._watch_loop(), name="pipeline-watch")

    async def _watch_loop(self) -> None:
        """Ping every actor that is not known to be down; a failed ping marks it suspect (restarting)."""
        while not self.stopped:
            for slot in [s for group in self.slots.values() for s in group]:
                if not (slot.dead or slot.suspect or slot.probing):
                    slot.probing = True
                    asyncio.get_running_loop().create_task(self._probe(slot))
            await asyncio.sleep(self.stream.watch_every_s)

    async def _probe(self, slot: ActorSlot) -> None:
        try:
            await asyncio.wrap_future(slot.handle.ping.remote().future())  # a busy actor answers late: fine
        except RayActorError as exc:
            if not slot.suspect:
                log.warning("%s stopped answering (%s); calls wait for its restart",
                            slot.name, type(exc).__name__)
            slot.suspect = True
        except Exception as exc:  # e.g. the pipeline was stopped
            log.debug("watch ping of %s: %s", slot.name, exc)
        finally:
            slot.probing = False

    async def _await_ready(self, slot: ActorSlot) -> None:
        """Ping with growing pauses until the restarted actor answers, or restart_wait_s runs out."""
        deadline = time.monotonic() + self.stream.restart_wait_s
        pause = 0.1
        while True:
            try:
                await asyncio.wait_for(asyncio.wrap_future(slot.handle.ping.remote().future()), 5.0)
                slot.suspect = False
                log.info("%s answers again", slot.name)
                return
            except ActorDiedError as exc:  # calls to a restarting actor wait; this one will never answer
                slot.dead = True
                log.error("%s is dead: %s", slot.name, str(exc).splitlines()[0] if str(exc) else exc)
                return
            except (RayActorError, asyncio.TimeoutError, TimeoutError):
                pass
            if time.monotonic() + pause > deadline:
                log.error("%s did not come back within %g s", slot.name, self.stream.restart_wait_s)
                return  # stays suspect: the next call tries again
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)


def __getattr__(name: str) -> Any:
    if name == "PipelineSink":  # the sink lives in its own module; re-exported here for callers
        from actors.sink import PipelineSink

        return PipelineSink
    raise AttributeError(name)
