"""`magtkd-stream serve`: the long-running service — the Ray pipeline behind the websocket gateway.

Start order is cheapest-check-first, so a mistake costs seconds and leaves
nothing behind: tokens and gateway limits, then the local devices (--mic /
--camera), then the Ray actors, then the websocket server. Shutdown runs the
other way on SIGINT or SIGTERM: the local session and every publisher flush
their last utterance and end, subscribers drain, the gateway closes, and only
then are the actors (and a Ray this process started) stopped. A second signal
cuts the graceful part short.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import signal
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

from actors.gateway import TOKENS_ENV, Gateway, GatewayConfig
from actors.gateway_auth import token_table
from actors.local_devices import LocalSession, open_devices
from actors.metrics import MetricsServer
from actors.pipeline import Pipeline
from magtkd_stream.streaming.replay import format_event
from actors.sink import PipelineSink
from magtkd_stream.wire.bus import BusEvent
from magtkd_stream.config import Config, ConfigError
from magtkd_stream.devices import Camera, DeviceError, Microphone

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the protocol's session id (schemas/defs.json)
NO_TOKEN = (
    "refusing to serve without a client token: pass --token T (repeatable), set {env}=T1,T2, "
    "list them under stream.gateway.tokens in the profile, or pass --tokens-file; clients must present one of them"
)


class ServeError(RuntimeError):
    """The service could not come up (e.g. its port is taken); the message says what to change."""


def gateway_config(
    cfg: Config,
    host: str,
    port: int,
    tokens: Sequence[str] = (),
    *,
    tokens_file: Optional[str] = None,
    tls_cert: Optional[str] = None,
    tls_key: Optional[str] = None,
    allowed_origins: Sequence[str] = (),
) -> GatewayConfig:
    """The profile's `stream.gateway` limits with the command line's address, tokens, TLS files and origins."""
    base = cfg.stream.gateway
    changes: dict[str, Any] = dict(host=host, port=port, tokens=tuple(dict.fromkeys([*base.tokens, *tokens])))
    if tokens_file:
        changes["tokens_file"] = str(tokens_file)
    if tls_cert or tls_key:
        changes.update(tls_cert=str(tls_cert or ""), tls_key=str(tls_key or ""))
    if allowed_origins:
        changes["allowed_origins"] = tuple(dict.fromkeys([*base.allowed_origins, *allowed_origins]))
    return dataclasses.replace(base, **changes)


def _err(msg: str) -> None:
    print(f"magtkd-stream serve: {msg}", file=sys.stderr, flush=True)


def describe_health(health: Mapping[str, Any]) -> str:
    """One line: ok or not, model, and each actor's state."""
    parts = []
    for name, a in health["actors"].items():
        parts.append(f"{name} {a['state']}" + (f" {a['ping_ms']:.1f} ms" if "ping_ms" in a else ""))
    status = "ok" if health["ok"] else "DEGRADED"
    return f"health: {status}; model {health['model']}, window {health['window']}; " + ", ".join(parts)


async def _print_events(gateway: Gateway, session: str, out: Callable[[str], Any]) -> None:
    """Print the local session's emotion lines as they are published (like `run FILE` does)."""
    sub = gateway.bus.subscribe(session)
    try:
        async for item in sub:
            if isinstance(item, BusEvent):
                line = format_event(item.data)
                if line is not None:
                    out(line)
                if item.data["type"] == "session_end":
                    return
    finally:
        sub.close()


async def serve(
    pipeline: Pipeline,
    gw_cfg: GatewayConfig,
    *,
    mic: Optional[Microphone] = None,
    camera: Optional[Camera] = None,
    session: str = "local",
    stop: Optional[asyncio.Event] = None,
    out: Callable[[str], Any] = print,
    metrics_port: Optional[int] = None,
) -> None:
    """Serve until `stop` is set, or SIGINT / SIGTERM when `stop` is None; then shut down gracefully.

    metrics_port: also serve /metrics (Prometheus) and /healthz on this port of gw_cfg.host (0: any free port).
    """
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    stop = stop or asyncio.Event()
    main = asyncio.current_task()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("%s: shutting down (again to stop at once)", signal.Signals(signum).name)
            stop.set()
        elif main is not None:
            log.warning("%s again: stopping without waiting for open sessions", signal.Signals(signum).name)
            main.cancel()

    if own_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
    sink = PipelineSink(pipeline)
    gateway = Gateway(gw_cfg, sink)
    local: Optional[LocalSession] = None
    printer: Optional[asyncio.Task] = None
    metrics: Optional[MetricsServer] = None
    try:
        try:
            await gateway.start()
        except OSError as exc:  # e.g. the port is taken
            raise ServeError(f"cannot listen on {gw_cfg.host}:{gw_cfg.port}: {exc}") from None
        host = f"[{gw_cfg.host}]" if ":" in gw_cfg.host else gw_cfg.host
        out(f"serving {gateway.scheme}://{host}:{gateway.port}/ (protocol v1; Ctrl-C to stop)")
        if metrics_port is not None:
            try:
                metrics = MetricsServer(gateway, loop, pipeline.health, gw_cfg.host, metrics_port).start()
            except OSError as exc:
                raise ServeError(f"cannot serve metrics on {gw_cfg.host}:{metrics_port}: {exc}") from None
            out(f"metrics on http://{host}:{metrics.port}/metrics, health on http://{host}:{metrics.port}/healthz")
        health = await pipeline.health_async()
        out(describe_health(health))
        log.debug("health: %s", json.dumps(health))
        if mic is not None:
            local = LocalSession(sink, gateway.bus, session, mic, camera)
            await local.start()
            printer = loop.create_task(_print_events(gateway, session, out))
            out(f"local session {session!r}: {mic.name}{' + camera' if camera else ''}")
        await stop.wait()
        out("stopping: flushing open sessions")
        if local is not None:
            await local.stop()
            local = None
        await gateway.stop()
        await sink.close()
        if printer is not None:
            await asyncio.wait_for(printer, 5.0)
    finally:
        if metrics is not None:
            metrics.stop()
        if local is not None:  # cancelled or failed mid-way: release the devices at least
            local.mic.close()
            if local.camera is not None:
                local.camera.close()
        if printer is not None and not printer.done():
            printer.cancel()
        if own_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


STOP_BOUND_S = 15.0  # the actors and a Ray this process started are gone this long after the gateway closed


def stop_within(pipeline: Pipeline, bound_s: float) -> bool:
    """Stop the pipeline; if Ray has not shut down within bound_s, kill this process's children. True: in time."""
    import threading

    done = threading.Event()

    def stop() -> None:
        try:
            pipeline.stop()
        except Exception:  # logged; the bound below still holds
            log.exception("stopping the pipeline failed")
        finally:
            done.set()

    threading.Thread(target=stop, name="pipeline-stop", daemon=True).start()
    if done.wait(bound_s):
        return True
    import psutil

    children = psutil.Process().children(recursive=True)
    log.warning("Ray did not stop within %.0f s; killing its %d processes", bound_s, len(children))
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(children, timeout=5)
    return False


def serve_cli(cfg: Config, args: Any) -> int:
    """The `serve` command; returns the exit status (0 after a clean shutdown)."""
    try:
        gw_cfg = gateway_config(
            cfg, args.host, args.port, args.token,
            tokens_file=getattr(args, "tokens_file", None),
            tls_cert=getattr(args, "tls_cert", None),
            tls_key=getattr(args, "tls_key", None),
            allowed_origins=getattr(args, "allowed_origin", None) or (),
        )
        tokens = token_table(gw_cfg).tokens  # reads the tokens file: a mistake costs seconds, not a Ray start
        gw_cfg.ssl_context()
    except ConfigError as exc:
        _err(f"configuration error: {exc}")
        return EXIT_USAGE
    if not tokens:
        _err(NO_TOKEN.format(env=TOKENS_ENV))
        return EXIT_USAGE
    port = getattr(args, "metrics_port", None)
    if port is not None and not (0 <= port <= 65535) or (port and port == gw_cfg.port):
        _err(f"--metrics-port {port}: must be in [0, 65535] and differ from the websocket port {gw_cfg.port}")
        return EXIT_USAGE
    if (args.mic or args.camera) and not SESSION_ID.fullmatch(args.session):
        _err(f"--session {args.session!r} is not a valid session id: 1-64 of A-Z a-z 0-9 _ . -")
        return EXIT_USAGE
    mic = camera = None
    if args.mic or args.camera:
        try:
            mic, camera = open_devices(args.mic, args.camera)
        except DeviceError as exc:
            _err(str(exc))
            return EXIT_USAGE if args.camera and not args.mic else EXIT_FAILED
    pipeline: Optional[Pipeline] = None
    clean = False  # the gateway closed without an error: say "stopped" once the actors are gone
    try:
        try:
            pipeline = Pipeline.start(cfg, args.address)
        except ConfigError as exc:
            _err(f"configuration error: {exc}")
            return EXIT_USAGE
        except (FileNotFoundError, TimeoutError, ValueError, ImportError) as exc:
            _err(f"the pipeline could not start: {exc}")
            return EXIT_FAILED
        asyncio.run(serve(pipeline, gw_cfg, mic=mic, camera=camera, session=args.session,
                          out=lambda line: print(line, flush=True),
                          metrics_port=getattr(args, "metrics_port", None)))
        clean = True
        return EXIT_OK
    except ServeError as exc:
        _err(str(exc))
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        _err("interrupted")
        return 130
    finally:
        for dev in (camera, mic):
            if dev is not None:
                dev.close()
        if pipeline is not None:
            # A late Ctrl-C must not abort the cleanup half-way and leave Ray processes behind.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                stop_within(pipeline, STOP_BOUND_S)
            finally:
                signal.signal(signal.SIGINT, previous)
        if clean:
            print("stopped", flush=True)
