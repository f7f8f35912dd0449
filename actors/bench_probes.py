"""What the benchmark and the soak read off the running service: RSS, CPU seconds, batch sizes.

Measured from outside the recognizer (psutil on this node's processes, the
pipeline's health report), so that the numbers include Ray's own processes
and never depend on what the service chooses to report about itself.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Mapping, Optional

ACTOR_CLASSES = ("ASRWorker", "EncoderWorker", "FusionWorker")


def _cpu_seconds(proc: Any) -> float:
    """User + system CPU seconds of one process and its threads."""
    t = proc.cpu_times()
    return float(t.user + t.system)


def _actor_processes() -> list[Any]:
    """This Ray node's actor processes of the recognizer (children of the raylet of our session)."""
    import psutil
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    session_dir = node.get_session_dir_path() if node is not None else None
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] != "raylet":
                continue
            if session_dir and not any(session_dir in a for a in proc.info["cmdline"] or ()):
                continue
            for child in proc.children():
                title = (child.cmdline() or [""])[0]
                if any(title.startswith(f"ray::{c}") for c in ACTOR_CLASSES):
                    found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class RssSampler:
    """Samples the summed RSS of this process and the actor processes every `period_s`; keeps the peak."""

    def __init__(self, period_s: float = 0.5, keep_series: bool = False) -> None:
        import psutil

        self.period_s = period_s
        self.series: Optional[list[tuple[float, float]]] = [] if keep_series else None  # (wall, total MB)
        # (wall, CPU seconds of the whole machine, CPU seconds of this process and its descendants): what else
        # ran beside the service, so that a slow stretch of a long run can be told from contention
        self.cpu_series: Optional[list[tuple[float, float, float]]] = [] if keep_series else None
        self.me = psutil.Process()
        self.actors = _actor_processes()
        self.peak = {"total_mb": 0.0, "driver_mb": 0.0, "actors_mb": 0.0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        import psutil

        driver = self.me.memory_info().rss
        actors = 0
        for proc in self.actors:
            try:
                actors += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        mb = 1 / (1 << 20)
        now = time.time()
        if self.series is not None:
            self.series.append((now, round((driver + actors) * mb, 1)))
        if self.cpu_series is not None:
            own_cpu = _cpu_seconds(self.me)  # and every process below it: Ray's own services and its workers
            for proc in self.me.children(recursive=True):
                try:
                    own_cpu += _cpu_seconds(proc)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            machine = psutil.cpu_times()
            busy = machine.user + machine.system + getattr(machine, "nice", 0.0) + getattr(machine, "irq", 0.0) \
                + getattr(machine, "softirq", 0.0)
            self.cpu_series.append((now, busy, own_cpu))
        if (driver + actors) * mb > self.peak["total_mb"]:
            self.peak = {"total_mb": round((driver + actors) * mb, 1), "driver_mb": round(driver * mb, 1),
                         "actors_mb": round(actors * mb, 1)}
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def result(self) -> dict[str, Any]:
        return {**self.peak, "actor_processes": len(self.actors), "samples": self.samples,
                "period_s": self.period_s}


class CpuMeter:
    """CPU seconds (user + system) each named process spends between enter and exit.

    Names are the pipeline's actor slots ("asr#0", ...) plus "driver" (this
    process: websockets, VAD, media); it tells which stage eats the cores that
    the latency percentiles wait for.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        import psutil

        self.procs: dict[str, Any] = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                continue
        self.start: dict[str, float] = {}
        self.spent: dict[str, Optional[float]] = {}

    @staticmethod
    def _cpu(proc: Any) -> Optional[float]:
        import psutil

        try:
            t = proc.cpu_times()
        except psutil.Error:  # the process ended (a restarted actor)
            return None
        return float(t.user + t.system)

    def __enter__(self) -> "CpuMeter":
        self.start = {name: c for name, p in self.procs.items() if (c := self._cpu(p)) is not None}
        return self

    def __exit__(self, *exc: object) -> None:
        for name, began in self.start.items():
            now = self._cpu(self.procs[name])
            self.spent[name] = None if now is None else round(now - began, 2)

    def result(self) -> dict[str, Optional[float]]:
        return dict(sorted(self.spent.items()))


def local_actor_pids(health: Mapping[str, Any]) -> dict[str, int]:
    """Actor slot -> pid for the actors that run on this machine (a remote pid means nothing here)."""
    here = socket.gethostname()
    return {name: int(a["pid"]) for name, a in health.get("actors", {}).items()
            if a.get("pid") is not None and a.get("host") == here}


def batch_sizes(health: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per actor: batches run and items in them since it started (warm-up included), and the mean batch."""
    out = {}
    for name, a in sorted(health.get("actors", {}).items()):
        if isinstance(a.get("batches"), int) and isinstance(a.get("items"), int):
            out[name] = {"batches": a["batches"], "items": a["items"],
                         "mean_batch": round(a["items"] / a["batches"], 2) if a["batches"] else None}
    return out
