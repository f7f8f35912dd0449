"""The `magtkd-stream` command: run a media file, serve live sessions, inspect a profile.

This is an entry point, so it (and only it) configures logging. The Ray-based
commands import actors/ lazily: the library itself never needs Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from magtkd_stream.config import Config, ConfigError, config_to_dict, load_config

log = logging.getLogger("magtkd_stream.cli")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="lite", help="profile name in configs/ or a YAML path (default: lite)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set stream.window=4 (repeatable)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magtkd-stream", description="Real-time multimodal emotion recognition in conversations (MAGTKD)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="replay an audio or video file through the streaming pipeline",
                         epilog="exit status: 0 recognised; 1 every utterance of a file failed; 2 bad input "
                                "(the message says what); 3 no speech found in a file")
    run.add_argument("file", type=Path, nargs="+",
                     help="audio or video file(s) (anything FFmpeg decodes); several run in order, one session each")
    run.add_argument("--fast", action="store_true", help="as fast as possible instead of real-time pace")
    run.add_argument("--out", type=Path, default=None, help="write every event as JSONL here (one file)")
    run.add_argument("--out-dir", type=Path, default=None, help="write each file's events to DIR/<session>.jsonl")
    run.add_argument("--vectors-dir", type=Path, default=None,
                     help="also write each file's encoder vectors per utterance to DIR/<session>.npz "
                          "(what training on served inputs reads)")
    run.add_argument("--report", type=Path, default=None, metavar="DIR",
                     help="also write DIR/report.html: a timeline of the utterances (fused and per-modality labels "
                          "per speaker), a latency histogram and the emotion counts (PNGs beside it)")
    run.add_argument("--speaker", default=None, help="speaker label for the whole file (no diarization)")
    run.add_argument("--speakers", default=None, metavar="NAME,NAME",
                     help="names for the voices in order of appearance, e.g. Ana,Ben (diarization names them)")
    run.add_argument("--no-diarize", action="store_true",
                     help="one speaker for the whole file; by default each utterance's voice decides its speaker "
                          "(A, B, ...; stream.diarize)")
    run.add_argument("--backend", choices=("ray", "local"), default="ray",
                     help="ray (default): the Ray actors `serve` runs; local: the same models in this process, "
                          "no Ray (starts faster; no fault isolation)")
    _add_config_args(run)

    serve = sub.add_parser("serve", help="run the websocket service until stopped")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=8765, help="websocket port (default %(default)s; 0: any free port)")
    serve.add_argument("--token", action="append", default=[],
                       help="accepted client token (repeatable); each plain token is its own tenant")
    serve.add_argument("--tokens-file", default=None, metavar="PATH",
                       help="YAML/JSON list of {token, tenant, roles} entries (roles: publish, subscribe, admin)")
    serve.add_argument("--tls-cert", default=None, metavar="PEM", help="certificate chain: serve wss:// (with --tls-key)")
    serve.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    serve.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                       help="accepted browser Origin, e.g. https://app.example.com (repeatable; default: any)")
    serve.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                       help="also serve Prometheus /metrics and JSON /healthz over HTTP on this port (default: off)")
    serve.add_argument("--mic", action="store_true", help="also publish this machine's microphone as a session")
    serve.add_argument("--camera", action="store_true", help="also publish this machine's camera (with --mic)")
    serve.add_argument("--session", default="local", help="session id for --mic/--camera")
    _add_config_args(serve)

    info = sub.add_parser("info", help="print the resolved configuration of a profile")
    _add_config_args(info)
    return parser


def _run_diarization(cfg: Config, args: argparse.Namespace) -> Config:
    """`run` diarizes a file unless told otherwise: --no-diarize, --speaker, or --set stream.diarize.enabled=..."""
    diarize = cfg.stream.diarize
    if args.speakers is not None:
        if args.no_diarize or args.speaker:
            raise ConfigError("run: --speakers names the voices diarization finds; it does not go with "
                              "--no-diarize or --speaker (one name for the whole file)")
        names = [n.strip() for n in args.speakers.split(",") if n.strip()]
        try:
            diarize = dataclasses.replace(diarize, enabled=True, names=names,
                                          max_speakers=max(diarize.max_speakers, len(names)))
        except ConfigError as exc:
            raise ConfigError(f"run --speakers {args.speakers!r}: stream.{exc}") from None
    elif not any(o.split("=", 1)[0].strip() == "stream.diarize.enabled" for o in args.overrides):
        diarize = dataclasses.replace(diarize, enabled=not (args.no_diarize or args.speaker))
    return dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, diarize=diarize))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # the gateway logs each hello with its role, session and address instead
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"magtkd-stream: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "info":
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    if args.command == "run":
        from actors.run_file import run_file_cli

        try:
            cfg = _run_diarization(cfg, args)
        except ConfigError as exc:
            print(f"magtkd-stream: {exc}", file=sys.stderr)
            return 2

        return run_file_cli(cfg, args)
    if args.command == "serve":
        from actors.serve import serve_cli

        return serve_cli(cfg, args)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
