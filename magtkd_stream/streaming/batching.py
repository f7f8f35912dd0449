"""Cross-session micro-batching on an asyncio loop: gather requests for a short, bounded wait.

Each session's request carries a few items; the batcher collects requests
until `max_batch` items are waiting or `wait_s` has passed since the oldest
arrived, then runs one batched call on a single worker thread. While that call
runs, new requests queue up and form the next batch, so under load batches
grow by themselves and the cost per session falls. The event loop never
computes, so the actor keeps answering (health pings, new requests) meanwhile.

Work that no one waits on yet (a face detected as its frame arrives) goes in
through `background`: it runs on the same thread only while no batch is
waiting, one call at a time, so a batch never queues behind more than one of
them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)

BatchFn = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Request:
    items: list[Any]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Background:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future


class MicroBatcher:
    """`await submit(items)` -> the results of `fn` for those items, computed in a shared batch.

    `fn(all_items) -> results` (one per item) runs on one dedicated thread, so
    the model is never called concurrently. If a batch of several requests
    fails, each request is retried alone, so one bad input fails only its own
    request.
    """

    def __init__(self, fn: BatchFn, wait_s: float = 0.01, max_batch: int = 16, name: str = "batch") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn = fn
        self.wait_s = max(0.0, wait_s)
        self.max_batch = max_batch
        self.name = name
        self._pending: list[_Request] = []
        self._background: list[_Background] = []
        self._arrival: Optional[asyncio.Event] = None
        self._runner: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.batches = 0
        self.items = 0

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if not items:
            return []
        loop = asyncio.get_running_loop()
        req = _Request(items, loop.create_future())
        self._pending.append(req)
        self._wake(loop)
        return await req.future

    async def background(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the model thread when no batch is waiting (batches always go first)."""
        loop = asyncio.get_running_loop()
        job = _Background(fn, args, loop.create_future())
        self._background.append(job)
        self._wake(loop)
        return await job.future

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._runner is None or self._runner.done():
            self._arrival = asyncio.Event()
            self._runner = loop.create_task(self._run(), name=f"{self.name}-batcher")
        assert self._arrival is not None
        self._arrival.set()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the model thread, between batches (warm-up, one-off calls)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _waiting_items(self) -> int:
        return sum(len(r.items) for r in self._pending)

    async def _run(self) -> None:
        assert self._arrival is not None
        while True:
            if not self._pending and not self._background:
                self._arrival.clear()
                await self._arrival.wait()
            if not self._pending:
                await self._run_background(self._background.pop(0))
                continue
            deadline = self._pending[0].arrived + self.wait_s
            while self._waiting_items() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), left)
                except (asyncio.TimeoutError, TimeoutError):
                    break
            batch, count = [], 0
            while self._pending and (not batch or count + len(self._pending[0].items) <= self.max_batch):
                req = self._pending.pop(0)
                batch.append(req)
                count += len(req.items)
            await self._execute(batch)

    async def _execute(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a caller may have given up (cancelled)
        if not live:
            return
        flat = [item for r in live for item in r.items]
        try:
            results = await self.call(self._checked, flat)
        except Exception as exc:
            if len(live) == 1:
                _fail(live[0], exc)
                return
            log.warning("%s: batch of %d requests failed (%s); retrying them one by one", self.name, len(live), exc)
            for r in live:
                await self._execute([r])
            return
        self.batches += 1
        self.items += len(flat)
        pos = 0
        for r in live:
            n = len(r.items)
            if not r.future.done():
                r.future.set_result(list(results[pos : pos + n]))
            pos += n

    async def _run_background(self, job: _Background) -> None:
        if job.future.done():  # the caller gave up
            return
        try:
            result = await self.call(job.fn, *job.args)
        except Exception as exc:
            _fail(job, exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    def _checked(self, flat: list[Any]) -> Sequence[Any]:
        results = self.fn(flat)
        if len(results) != len(flat):
            raise RuntimeError(f"{self.name}: batch function returned {len(results)} results for {len(flat)} items")
        return results

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        for r in self._pending:
            _fail(r, RuntimeError(f"{self.name} closed"))
        for job in self._background:
            _fail(job, RuntimeError(f"{self.name} closed"))
        self._pending.clear()
        self._background.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _fail(req: _Request | _Background, exc: BaseException) -> None:
    if not req.future.done():
        req.future.set_exception(exc)
