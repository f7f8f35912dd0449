"""Health and Prometheus metrics over real HTTP, beside a gateway serving real websocket sessions."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.metrics import MetricsServer
from test_gateway import ScriptedSink, expect_error, healthy_session, hello, raw, running
from test_serve import http_get


def test_metrics_count_events_errors_and_latency_and_health_follows_the_pipeline() -> None:
    pipeline = {"ok": True, "actors": {"asr#0": {"state": "alive"}}}

    async def scenario() -> tuple[list[tuple[int, str]], dict[str, Any]]:
        sink = ScriptedSink(every=5, at_end=2)
        async with running(sink) as gw:
            server = MetricsServer(gw, asyncio.get_running_loop(), lambda: pipeline, "127.0.0.1", 0).start()
            base = f"http://127.0.0.1:{server.port}"
            try:
                live = asyncio.Event()
                await healthy_session(gw, live)
                await expect_error(await raw(gw, hello(token="nope")), "bad_token", True)
                got = [await asyncio.to_thread(http_get, base + path) for path in ("/metrics", "/healthz", "/x")]
                pipeline["ok"] = False  # an actor is down: health says so (after its 1 s cache)
                await asyncio.sleep(1.1)
                got.append(await asyncio.to_thread(http_get, base + "/healthz"))
            finally:
                server.stop()
            return got, dict(gw.errors_sent)

    (metrics, health, missing, unhealthy), errors = asyncio.run(asyncio.wait_for(scenario(), 30))
    status, text = metrics
    assert status == 200
    assert 'magtkd_events_total{type="emotion"} 7.0' in text  # 25 chunks / 5 + 2 at the end
    assert 'magtkd_events_total{type="transcript"} 7.0' in text and 'magtkd_sessions{state="ended"} 1.0' in text
    assert "magtkd_e2e_latency_ms_count 7.0" in text and 'magtkd_stage_latency_ms_count{stage="asr"} 7.0' in text
    assert 'magtkd_errors_sent{code="bad_token"} 1.0' in text and errors == {"bad_token": 1}
    assert "magtkd_connections " in text and "magtkd_inbound_queue_depth 0.0" in text
    assert health[0] == 200 and '"ok": true' in health[1] and '"gateway": "serving"' in health[1]
    assert missing[0] == 404 and "/metrics" in missing[1]
    assert unhealthy[0] == 503 and '"ok": false' in unhealthy[1]
