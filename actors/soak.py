"""Soak test: N real-time sessions for M minutes, each replaying the media again and again.

    python -m actors.soak --sessions 8 --minutes 30 --out runs/soak/soak.json

A long run finds what a benchmark of one replay cannot: events lost after
hours of fan-out, memory that only grows, latency that creeps up as queues
fill. Each of the N lanes opens a new session per pass of the media (session
ids are single-use), publishing at real-time pace over a real websocket, with
its own subscriber; the pipeline and the gateway live for the whole run. The
report counts lost events (per session, the publisher's `ended.last_seq`
against the seqs its subscriber received, in order, each once), samples the
RSS of this process and every actor process every `--rss-every` seconds, and
gives latency (end of speech to the final emotion at the subscriber) per
`--window-minutes`, with the two checks a long run must pass: RSS growth
over the last 2/3 of the run, and the spread of the windows' p95.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from actors.bench import DEFAULT_MEDIA, Message, SessionRun, client_messages, run_session
from actors.bench_probes import RssSampler
from actors.gateway import Gateway
from actors.pipeline import Pipeline
from actors.serve import gateway_config
from actors.sink import PipelineSink
from magtkd_stream.config import ConfigError, load_config

log = logging.getLogger("actors.soak")


def lost_events(run: SessionRun) -> int:
    """Events of an ended session its subscriber did not get exactly once and in order (0 if it never ended:
    such a pass counts as failed instead)."""
    if run.last_seq is None:
        return 0
    seqs = [e["seq"] for _, e in run.events if isinstance(e.get("seq"), int)]
    if seqs == list(range(1, len(seqs) + 1)):
        return max(0, run.last_seq - len(seqs))
    return run.last_seq  # a gap, a repeat or a swap: count the whole session as lost


def latency_rows(runs: Sequence[SessionRun], t0: float) -> list[tuple[float, float]]:
    """(seconds since start, ms) for every final emotion event with status ok."""
    rows = []
    for run in runs:
        for wall, event in run.events:
            if event.get("type") == "emotion" and event.get("status") == "ok":
                sent = run.sent_at(float(event["end"]))
                if sent is not None:
                    rows.append((wall - t0, (wall - sent) * 1e3))
    return sorted(rows)


def _spans(rows: Sequence[tuple], width_s: float) -> Iterator[tuple[float, list[tuple]]]:
    """(window start, the rows in it) for consecutive windows of `width_s` over rows sorted by their first field
    (seconds since the start); a window with no rows is skipped."""
    start = 0.0
    last = rows[-1][0] if rows else -1.0
    while start <= last:
        span = [r for r in rows if start <= r[0] < start + width_s]
        if span:
            yield start, span
        start += width_s


def windows(rows: Sequence[tuple[float, float]], width_s: float) -> list[dict[str, Any]]:
    out = []
    for start, span in _spans(rows, width_s):
        ms = [v for _, v in span]
        out.append({"from_min": round(start / 60, 1), "n": len(ms), "p50": round(float(np.percentile(ms, 50)), 1),
                    "p95": round(float(np.percentile(ms, 95)), 1)})
    return out


def other_cpu(samples: Sequence[tuple[float, float, float]], t0: float, width_s: float,
              cores: int) -> list[dict[str, Any]]:
    """Per window: cores' worth of CPU that processes outside the service used (machine busy time minus that of
    the driver and its descendants: Ray's services and actors), so a slow window can be told from a shared
    machine. A process that ended inside a window takes its CPU time with it, so other_cores is an upper bound."""
    out = []
    for start, span in _spans([(t - t0, busy, own) for t, busy, own in samples], width_s):
        if len(span) < 2:
            continue
        wall = span[-1][0] - span[0][0]
        other = (span[-1][1] - span[0][1]) - (span[-1][2] - span[0][2])
        out.append({"from_min": round(start / 60, 1),
                    "other_cores": round(max(0.0, other) / wall, 2) if wall > 0 else None,
                    "service_cores": round((span[-1][2] - span[0][2]) / wall, 2) if wall > 0 else None,
                    "of_cores": cores})
    return out


def rss_growth(series: Sequence[tuple[float, float]], t0: float, duration_s: float) -> Optional[float]:
    """Relative RSS growth from 1/3 into the run to its end (mean of the first and last minute of that span)."""
    span_start = t0 + duration_s / 3
    tail = [(t, mb) for t, mb in series if t >= span_start]
    if len(tail) < 2:
        return None
    first = [mb for t, mb in tail if t < tail[0][0] + 60]
    last = [mb for t, mb in tail if t > tail[-1][0] - 60]
    return round((float(np.mean(last)) - float(np.mean(first))) / float(np.mean(first)), 4)


async def lane(url: str, token: str, i: int, messages: Sequence[Message], deadline: float, delay: float,
               timeout_s: float, runs: list[SessionRun]) -> None:
    """Replay the media as one new session after another until `deadline` (a pass in progress finishes)."""
    await asyncio.sleep(delay)
    n = 0
    while time.time() < deadline:
        run = SessionRun(f"soak-{i}-{n}")
        runs.append(run)
        await run_session(url, token, run, messages, 0.0, timeout_s)
        n += 1


def run_lanes(url: str, token: str, sessions: int, messages: Sequence[Message], minutes: float, stagger_s: float,
              timeout_s: float) -> list[SessionRun]:
    runs: list[SessionRun] = []
    deadline = time.time() + minutes * 60

    async def main() -> None:
        await asyncio.gather(*(lane(url, token, i, messages, deadline, i * stagger_s, timeout_s, runs)
                               for i in range(sessions)))

    asyncio.run(main())
    return runs


async def _soak(pipeline: Pipeline, cfg: Any, args: argparse.Namespace, messages: Sequence[Message]
                ) -> list[SessionRun]:
    token = secrets.token_hex(16)
    gw_cfg = gateway_config(cfg, "127.0.0.1", 0, [token])
    gw_cfg = dataclasses.replace(gw_cfg, max_sessions_per_token=max(gw_cfg.max_sessions_per_token, args.sessions),
                                 max_subscribers_per_token=max(gw_cfg.max_subscribers_per_token, args.sessions))
    gateway = Gateway(gw_cfg, PipelineSink(pipeline))
    await gateway.start()
    try:
        url = f"ws://127.0.0.1:{gateway.port}/"
        return await asyncio.to_thread(run_lanes, url, token, args.sessions, messages, args.minutes, args.stagger,
                                       args.timeout)
    finally:
        await gateway.stop()
        await gateway.sink.close()  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m actors.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=8, help="concurrent real-time sessions (default 8)")
    p.add_argument("--minutes", type=float, default=30.0, help="how long new passes start (default 30)")
    p.add_argument("--media", default=DEFAULT_MEDIA, help=f"media each pass replays (default {DEFAULT_MEDIA})")
    p.add_argument("--config", default="lite", help="profile name or YAML path (default lite)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--fps", type=float, default=10.0, help="video frames per second sent (default 10)")
    p.add_argument("--stagger", type=float, default=2.0, help="seconds between the lanes' starts (default 2)")
    p.add_argument("--window-minutes", type=float, default=5.0, help="latency window (default 5)")
    p.add_argument("--rss-every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a session may wait for any message")
    p.add_argument("--out", type=Path, default=Path("soak.json"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection otherwise
    if args.sessions < 1 or args.minutes <= 0 or args.window_minutes <= 0 or args.rss_every <= 0:
        print("soak: --sessions must be >= 1 and --minutes, --window-minutes, --rss-every > 0", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        messages = client_messages(args.media, None, args.fps)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    try:
        pipeline = Pipeline.start(cfg)
    except (FileNotFoundError, TimeoutError, ConfigError, ImportError) as exc:
        print(f"soak: the pipeline could not start: {exc}", file=sys.stderr)
        return 1
    try:
        with RssSampler(args.rss_every, keep_series=True) as rss:
            t0 = time.time()
            runs = asyncio.run(_soak(pipeline, cfg, args, messages))
            wall = time.time() - t0
    finally:
        pipeline.stop()
    rows = latency_rows(runs, t0)
    wins = windows(rows, args.window_minutes * 60)
    p95s = [w["p95"] for w in wins[1:] if w["n"] >= 10]  # the first window holds the warm-up
    lost = sum(lost_events(r) for r in runs)
    series = rss.series or []
    report: dict[str, Any] = {
        "benchmark": "soak: real-time sessions replaying the media, one new session per pass",
        "config": args.config, "overrides": list(args.overrides), "media": args.media,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "sessions": args.sessions, "minutes": args.minutes, "wall_s": round(wall, 1),
        "passes": len(runs), "passes_failed": sum(1 for r in runs if r.error or r.last_seq is None),
        "errors": [f"{r.session}: {r.error}" for r in runs if r.error][:20],
        "events_received": sum(len(r.events) for r in runs), "lost_events": lost,
        "utterances": sum(1 for r in runs for _, e in r.events if e.get("type") == "emotion"),
        "failed_utterances": sum(1 for r in runs for _, e in r.events
                                 if e.get("type") == "emotion" and e.get("status") != "ok"),
        "latency_windows": wins,
        "cpu_windows": other_cpu(rss.cpu_series or [], t0, args.window_minutes * 60, os.cpu_count() or 1),
        "p95_spread": round(max(p95s) / min(p95s) - 1, 3) if len(p95s) >= 2 else None,
        "rss_mb": {"first": series[0][1] if series else None, "last": series[-1][1] if series else None,
                   "peak": rss.result()["total_mb"],
                   "growth_over_last_two_thirds": rss_growth(series, t0, wall),
                   "series": [(round(t - t0, 1), mb) for t, mb in series]},
    }
    text = json.dumps(report, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    summary = {k: report[k] for k in ("passes", "passes_failed", "lost_events", "utterances", "failed_utterances",
                                      "p95_spread")}
    print(json.dumps({**summary, "rss_growth": report["rss_mb"]["growth_over_last_two_thirds"],
                      "latency_windows": wins, "cpu_windows": report["cpu_windows"]}, indent=2), flush=True)
    print(f"soak: report written to {args.out.resolve()}", file=sys.stderr)
    return 0 if report["passes"] and not report["passes_failed"] and lost == 0 else 1



if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
