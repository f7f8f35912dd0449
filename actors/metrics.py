"""Health and Prometheus metrics of a running gateway, on an HTTP port of their own.

An operator needs to see, without a websocket client, whether the service is
up and how loaded it is. `/metrics` is the Prometheus text format
(prometheus-client, on a registry of its own so two servers in one process do
not mix); `/healthz` is JSON: 200 while the gateway accepts clients and every
actor answers, 503 otherwise. Counts that change per event (events, latency
histograms) are observed as the bus publishes; the rest (sessions,
connections, queue depths) is read from the gateway at scrape time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Mapping, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from magtkd_stream.wire.bus import BusEvent

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (25, 50, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000)
HealthFn = Callable[[], Mapping[str, Any]]


def gateway_state(gw: Any) -> dict[str, Any]:
    """What the gauges show, read from the gateway; call it on the gateway's event loop."""
    states: dict[str, int] = {"live": 0, "ended": 0}
    for info in gw.bus.sessions().values():
        states[info["state"]] = states.get(info["state"], 0) + 1
    return {
        "sessions": states,
        "connections": len(gw.guard.open),
        "publishers": len(gw._publishers),
        "subscribers": gw.bus.subscriber_count(),
        "inbound_queue_depth": sum(len(p.queue) for p in list(gw._publishers.values())),
        "subscribers_dropped": gw.bus.dropped_count,
        "errors_sent": dict(gw.errors_sent),
        "stopping": bool(gw.stopping),
    }


class _GatewayState(Collector):
    """Gauges from a gateway_state() snapshot taken when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.snapshot()
        sessions = GaugeMetricFamily("magtkd_sessions", "Sessions the server knows, by state", labels=["state"])
        for name, n in sorted(state["sessions"].items()):
            sessions.add_metric([name], n)
        yield sessions
        yield GaugeMetricFamily("magtkd_connections", "Open TCP connections (hello sent or not)",
                                value=state["connections"])
        yield GaugeMetricFamily("magtkd_publishers", "Publisher connections", value=state["publishers"])
        yield GaugeMetricFamily("magtkd_subscribers", "Subscriber connections", value=state["subscribers"])
        yield GaugeMetricFamily("magtkd_inbound_queue_depth",
                                "Audio chunks and frames waiting for the pipeline, summed over sessions",
                                value=state["inbound_queue_depth"])
        yield GaugeMetricFamily("magtkd_subscribers_dropped", "Slow subscribers disconnected since start",
                                value=state["subscribers_dropped"])
        errors = GaugeMetricFamily("magtkd_errors_sent", "Error messages sent to clients since start, by code",
                                   labels=["code"])
        for code, n in sorted(state["errors_sent"].items()):
            errors.add_metric([code], n)
        yield errors


class ServiceMetrics:
    """Prometheus metrics of one gateway: event counts and latency histograms, plus its live state."""

    def __init__(self, gateway: Any, snapshot: Optional[Callable[[], Mapping[str, Any]]] = None) -> None:
        """snapshot: gateway_state() made safe to call from the scraping thread (MetricsServer passes one)."""
        self.snapshot = snapshot or (lambda: gateway_state(gateway))
        self.registry = CollectorRegistry()
        self.events = Counter("magtkd_events", "Events published, by type", ["type"], registry=self.registry)
        self.failed = Counter("magtkd_utterances_failed", "Emotion events with status failed",
                              registry=self.registry)
        self.e2e = Histogram("magtkd_e2e_latency_ms", "End of speech to emotion event, ms",
                             buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        self.stage = Histogram("magtkd_stage_latency_ms", "Time per pipeline stage of a final emotion, ms",
                               ["stage"], buckets=LATENCY_BUCKETS_MS, registry=self.registry)
        self.registry.register(_GatewayState(lambda: self.snapshot()))
        gateway.bus.observers.append(self.observe)

    def observe(self, item: BusEvent) -> None:
        data = item.data
        kind = str(data.get("type"))
        self.events.labels(kind).inc()
        if kind != "emotion":
            return
        if data.get("status") == "failed":
            self.failed.inc()
        timing = data.get("timing") or {}
        if isinstance(timing.get("e2e_ms"), (int, float)):
            self.e2e.observe(float(timing["e2e_ms"]))
        for stage, ms in (timing.get("stages_ms") or {}).items():
            if isinstance(ms, (int, float)):
                self.stage.labels(str(stage)).observe(float(ms))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`/metrics` and `/healthz` over HTTP in a daemon thread; `health` is called at most once a second.

    Gateway state is read on the gateway's event loop (`loop`), never from the HTTP thread.
    """

    def __init__(self, gateway: Any, loop: asyncio.AbstractEventLoop, health: Optional[HealthFn], host: str,
                 port: int) -> None:
        self.gateway, self.loop, self._health = gateway, loop, health
        self.metrics = ServiceMetrics(gateway, self.state)
        self._cache: tuple[float, Mapping[str, Any]] = (0.0, {})
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(HTTPStatus.OK, server.metrics.text(), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/health"):
                    ok, body = server.health()
                    self._reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                                json.dumps(body).encode("utf-8"), "application/json")
                else:
                    self._reply(HTTPStatus.NOT_FOUND, b"not found; try /metrics or /healthz\n", "text/plain")

            def _reply(self, status: HTTPStatus, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("metrics %s - %s", self.address_string(), fmt % args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def state(self) -> Mapping[str, Any]:
        async def read() -> dict[str, Any]:
            return gateway_state(self.gateway)

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(5.0)

    def health(self) -> tuple[bool, dict[str, Any]]:
        try:
            state = self.state()
        except Exception as exc:  # the event loop is stuck or gone: that is the answer
            return False, {"ok": False, "gateway": f"not answering ({type(exc).__name__})"}
        body: dict[str, Any] = {"gateway": "stopping" if state["stopping"] else "serving",
                                "sessions_live": state["sessions"].get("live", 0),
                                "connections": state["connections"]}
        ok = not state["stopping"]
        if self._health is not None:
            with self._lock:
                at, cached = self._cache
                if time.monotonic() - at > 1.0:
                    try:
                        cached = dict(self._health())
                    except Exception as exc:  # Ray unreachable: report it, do not fail the endpoint
                        cached = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
                    self._cache = (time.monotonic(), cached)
            body["pipeline"] = cached
            ok = ok and bool(cached.get("ok"))
        body["ok"] = ok
        return ok, body
