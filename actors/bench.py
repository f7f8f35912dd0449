"""Streaming-latency benchmark, meant to run as a Ray job:

  ray job submit --working-dir . -- python -m actors.bench --sessions 4 \\
      --media demo/samples/conversation.mp4 --out bench.json [--quick] [--config lite]

It starts the pipeline on the cluster (RAY_ADDRESS inside a job, else a local
Ray) and a gateway on 127.0.0.1, then replays the media as N concurrent real
websocket publishers at real-time pace (PCM16 audio in 20 ms frames, JPEG
frames at about 10 fps), each watched by its own subscriber. The clients run
on their own thread and event loop, so a busy server loop cannot hold back
their clocks. End-to-end latency is what a user sees: the wall time an
utterance's final emotion event reaches its subscriber minus the wall time
the publisher sent the audio at that utterance's media end. Per-stage
timings come from the events themselves; peak memory is sampled from this
process (gateway and sink) and the recognizer's actor processes, and the CPU
seconds each of them spends during the replay are counted
(`cpu_s_during_replay`), which shows what eats the cores the tail waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import json
import logging
import os
import platform
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from actors.bench_probes import CpuMeter, RssSampler, batch_sizes, local_actor_pids
from actors.gateway import Gateway
from magtkd_stream.media import AudioChunk, decode, probe
from magtkd_stream.names import SAMPLE_RATE
from actors.pipeline import Pipeline
from actors.serve import gateway_config
from actors.sink import PipelineSink
from magtkd_stream.wire import protocol as P
from magtkd_stream.config import Config, ConfigError, load_config

log = logging.getLogger("actors.bench")

DEFAULT_MEDIA = "demo/samples/conversation.mp4"


# ---------------------------------------------------------------- media as a client sends it


@dataclass(frozen=True)
class Message:
    t: float  # media seconds at which a live client would send it
    payload: bytes  # a protocol v1 binary frame
    audio_end: Optional[float] = None  # audio: media time of its last sample


def client_messages(path: str, seconds: Optional[float], fps: float, jpeg_quality: int = 80) -> list[Message]:
    """The file's audio as 20 ms PCM16 frames and its video as JPEG frames, encoded once for every session."""
    import cv2

    out: list[Message] = []
    info = probe(path, need_audio=True)
    for item in decode(path, chunk_ms=20, video=info.has_video, max_fps=fps):
        if isinstance(item, AudioChunk):
            if seconds is not None and item.end_s > seconds + 1e-9:
                break
            pcm = np.round(np.clip(item.samples, -1.0, 32767 / 32768) * 32768).astype("<i2")
            out.append(Message(item.end_s, P.encode_audio(pcm), item.end_s))
        else:
            if seconds is not None and item.ts > seconds:
                continue
            ok, jpeg = cv2.imencode(".jpg", item.image, [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality])
            if ok:
                out.append(Message(item.ts, P.encode_video(item.ts, jpeg.tobytes())))
    if not any(m.audio_end is not None for m in out):
        raise ValueError(f"{path}: no audio to replay")
    return out


# ---------------------------------------------------------------- clients


@dataclass
class SessionRun:
    session: str
    sent_ends: list[float] = field(default_factory=list)  # media end of each audio frame sent, increasing
    sent_walls: list[float] = field(default_factory=list)  # wall time each was sent
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (received wall, event)
    video_sent: int = 0
    error: Optional[str] = None
    last_seq: Optional[int] = None  # the publisher's `ended`: the seq of the session's last event

    def sent_at(self, media_s: float) -> Optional[float]:
        """Wall time the audio at `media_s` was sent (the frame holding it; the last one past the end)."""
        if not self.sent_ends:
            return None
        i = bisect.bisect_left(self.sent_ends, media_s - 1e-6)
        return self.sent_walls[min(i, len(self.sent_walls) - 1)]


async def _recv_json(ws: Any, timeout: float) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def run_session(url: str, token: str, run: SessionRun, messages: Sequence[Message], delay: float,
                      timeout_s: float) -> None:
    """One subscriber, then one publisher replaying `messages` at real-time pace, until session_end."""
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    hello = {"type": "hello", "version": P.PROTOCOL_VERSION, "token": token, "session": run.session}
    has_video = any(m.audio_end is None for m in messages)
    try:
        async with connect(url, max_size=None) as sub, connect(url, max_size=None) as pub:
            await sub.send(json.dumps({**hello, "role": "subscriber"}))
            welcome = await _recv_json(sub, 30)
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"subscriber refused: {welcome}")

            async def listen() -> None:
                while True:
                    msg = await _recv_json(sub, timeout_s)
                    run.events.append((time.time(), msg))
                    if msg.get("type") == "session_end":
                        return

            listener = asyncio.create_task(listen())
            await pub.send(json.dumps({**hello, "role": "publisher", "sample_rate": SAMPLE_RATE,
                                       "speaker": run.session, "video": has_video}))
            welcome = await _recv_json(pub, 30)
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"publisher refused: {welcome}")
            t0 = loop.time()
            for m in messages:
                wait = t0 + m.t - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                wall = time.time()
                await pub.send(m.payload)
                if m.audio_end is not None:
                    run.sent_ends.append(m.audio_end)
                    run.sent_walls.append(wall)
                else:
                    run.video_sent += 1
            await pub.send(json.dumps({"type": "end", "version": P.PROTOCOL_VERSION}))
            while True:
                msg = await _recv_json(pub, timeout_s)
                if msg.get("type") == "ended":
                    run.last_seq = msg.get("last_seq")
                    break
                if msg.get("type") == "error" and msg.get("fatal"):
                    raise RuntimeError(f"publisher got a fatal error: {msg}")
            await asyncio.wait_for(listener, timeout_s)
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"[:300]
        log.error("session %s failed: %s", run.session, run.error)


def run_clients(url: str, token: str, sessions: int, messages: Sequence[Message], stagger_s: float,
                timeout_s: float) -> list[SessionRun]:
    """All sessions on a fresh event loop (call from a thread of its own)."""
    runs = [SessionRun(f"bench-{i}") for i in range(sessions)]

    async def main() -> None:
        await asyncio.gather(*(run_session(url, token, r, messages, i * stagger_s, timeout_s)
                               for i, r in enumerate(runs)))

    asyncio.run(main())
    return runs


# ---------------------------------------------------------------- report


def _pcts(values: Sequence[float], which: Sequence[int] = (50, 95, 99)) -> dict[str, Optional[float]]:
    if not values:
        return {**{f"p{q}": None for q in which}, "max": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in which}
    out.update(max=round(float(arr.max()), 1), n=int(arr.size))
    return out


def summarize(runs: Sequence[SessionRun]) -> dict[str, Any]:
    """Latency percentiles over every final emotion event of every session."""
    e2e: list[float] = []
    server_e2e: list[float] = []
    stages: dict[str, list[float]] = {}
    utterances = failed = interims = 0
    for run in runs:
        for wall, event in run.events:
            interims += event.get("type") == "emotion_interim"
            if event.get("type") != "emotion":
                continue
            utterances += 1
            if event.get("status") != "ok":
                failed += 1
                continue
            sent = run.sent_at(float(event["end"]))
            if sent is not None:
                e2e.append((wall - sent) * 1e3)
            server_e2e.append(float(event["timing"]["e2e_ms"]))
            for stage, ms in event["timing"]["stages_ms"].items():
                stages.setdefault(stage, []).append(float(ms))
    return {
        "utterances": utterances,
        "failed": failed,
        "interim_events": interims,
        "sessions_failed": sum(1 for r in runs if r.error),
        "session_errors": [f"{r.session}: {r.error}" for r in runs if r.error],
        "e2e_ms": _pcts(e2e),
        "server_e2e_ms": _pcts(server_e2e),
        "stages_ms": {k: _pcts(v, (50, 95)) for k, v in sorted(stages.items())},
        "video_frames_sent": sum(r.video_sent for r in runs),
    }


# ---------------------------------------------------------------- driver


async def _bench(pipeline: Pipeline, cfg: Config, messages: Sequence[Message], sessions: int, stagger_s: float,
                 timeout_s: float) -> list[SessionRun]:
    token = secrets.token_hex(16)
    gw_cfg = gateway_config(cfg, "127.0.0.1", 0, [token])
    gw_cfg = dataclasses.replace(gw_cfg, max_sessions_per_token=max(gw_cfg.max_sessions_per_token, sessions))
    gateway = Gateway(gw_cfg, PipelineSink(pipeline))
    await gateway.start()
    try:
        url = f"ws://127.0.0.1:{gateway.port}/"
        return await asyncio.to_thread(run_clients, url, token, sessions, messages, stagger_s, timeout_s)
    finally:
        await gateway.stop()
        await gateway.sink.close()  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m actors.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=None, help="concurrent sessions (default 4; --quick: 1)")
    p.add_argument("--media", default=DEFAULT_MEDIA, help=f"media file every session replays (default {DEFAULT_MEDIA})")
    p.add_argument("--seconds", type=float, default=None, help="replay only the first N seconds (--quick: 11)")
    p.add_argument("--config", default=None, help="profile name or YAML path (default lite; --quick: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set checkpoint=null (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny profile, 1 session, first 11 s: a CI smoke run")
    p.add_argument("--fps", type=float, default=10.0, help="video frames per second sent (default 10)")
    p.add_argument("--stagger", type=float, default=0.3, help="seconds between session starts (default 0.3)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="where to write the JSON report")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a session may wait for any message")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = args.config or ("tiny" if args.quick else "lite")
    sessions = args.sessions if args.sessions is not None else (1 if args.quick else 4)
    seconds = args.seconds if args.seconds is not None else (11.0 if args.quick else None)
    if sessions < 1:
        print(f"bench: --sessions must be >= 1, got {sessions}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(config, args.overrides)
    except ConfigError as exc:
        print(f"bench: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        messages = client_messages(args.media, seconds, args.fps)
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    media_s = max(m.t for m in messages)
    load_start = os.getloadavg()
    started = time.time()
    try:
        pipeline = Pipeline.start(cfg, args.address)
    except (FileNotFoundError, TimeoutError, ConfigError, ImportError) as exc:
        print(f"bench: the pipeline could not start: {exc}", file=sys.stderr)
        return 1
    pipeline_s = time.time() - started
    try:
        import ray

        cluster_cpus = ray.cluster_resources().get("CPU")
        pids = {"driver": os.getpid(), **local_actor_pids(pipeline.health())}
        with RssSampler() as rss, CpuMeter(pids) as cpu:
            t0 = time.time()
            runs = asyncio.run(_bench(pipeline, cfg, messages, sessions, args.stagger, args.timeout))
            replay_s = time.time() - t0
        model = pipeline.info.model
        batching = batch_sizes(pipeline.health())
    finally:
        pipeline.stop()
    report: dict[str, Any] = {
        "benchmark": "streaming latency (end of speech -> final emotion event at the subscriber)",
        "config": config,
        "profile": cfg.profile,
        "overrides": list(args.overrides),
        "model": model,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "ray_cluster_cpus": cluster_cpus,
            "load_avg_1_5_15_at_start": [round(x, 2) for x in load_start],
            "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "sessions": sessions,
        "media": args.media,
        "media_s_per_session": round(media_s, 2),
        "video_fps_max": args.fps,
        "video_fps_sent": round(sum(r.video_sent for r in runs) / max(media_s, 1e-9) / sessions, 2),
        "stagger_s": args.stagger,
        **summarize(runs),
        "peak_rss_mb": rss.result(),
        "cpu_s_during_replay": cpu.result(),
        "batches": batching,
        "pipeline_start_s": round(pipeline_s, 1),
        "replay_wall_s": round(replay_s, 1),
        "wall_s": round(time.time() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"bench: report written to {args.out.resolve()}", file=sys.stderr, flush=True)
    if report["utterances"] == 0 or report["sessions_failed"]:
        print("bench: FAILED: " + ("; ".join(report["session_errors"]) or "no emotion event arrived"),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
