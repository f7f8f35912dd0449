"""`magtkd-stream run FILE`: replay media files through the recognizer, on the Ray actors or in-process.

The replay itself (decode, pace, print, record) is magtkd_stream/streaming/replay.py;
this module starts the backend the user asked for (`--backend ray`, the
default: the same actors `serve` runs; `--backend local`: the same workers in
this process, no Ray), runs one session per file on it and stops what it started.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Sequence, Union

from actors.pipeline import Pipeline
from magtkd_stream.streaming.backend import Backend
from magtkd_stream.config import Config
from magtkd_stream.media import probe
from magtkd_stream.streaming.replay import PrintFn, format_summary, replay_file, unique_sessions

BACKENDS = ("ray", "local")
STARTING = {
    "ray": "starting the recognizer ({profile} profile): Ray and its actors load their models, 10-30 s on a CPU ...",
    "local": "starting the recognizer ({profile} profile) in this process: its models load, 5-15 s on a CPU ...",
}

__all__ = ["BACKENDS", "run_file", "run_files", "run_file_cli", "format_summary"]


def _run_on(cfg: Config, kind: str, address: Optional[str], given: Optional[Backend], print_fn: Optional[PrintFn],
            body: Callable[[Backend], Awaitable[Any]]) -> Any:
    """Run `body(backend)` on the given backend, or on one of `kind` started (and stopped) here."""
    if kind not in BACKENDS:
        raise ValueError(f"backend {kind!r} is not one of {', '.join(BACKENDS)}")
    if given is None and print_fn is not None:
        print_fn(STARTING[kind].format(profile=cfg.profile))
    if given is not None:
        return asyncio.run(body(given))
    if kind == "ray":
        pipe = Pipeline.start(cfg, address)
        try:
            return asyncio.run(body(pipe))
        finally:
            pipe.stop()

    async def local() -> Any:
        from magtkd_stream.streaming.local_backend import LocalBackend

        backend = await LocalBackend.start(cfg)
        try:
            return await body(backend)
        finally:
            backend.stop()

    return asyncio.run(local())


def run_file(
    cfg: Config,
    path: Union[str, Path],
    fast: bool = False,
    out_jsonl: Optional[Union[str, Path]] = None,
    print_fn: Optional[PrintFn] = print,
    *,
    pipeline: Optional[Backend] = None,
    backend: str = "ray",
    address: Optional[str] = None,
    session: Optional[str] = None,
    speaker: Optional[str] = "A",
    max_fps: float = 10.0,
    vectors_out: Optional[Union[str, Path]] = None,
    collect: Optional[list[dict[str, Any]]] = None,
) -> dict[str, Any]:
    """Replay `path` (audio or video); print a line per utterance; return the summary.

    Runs on `pipeline` when one is given (any Backend), else starts a `backend`
    ("ray": local Ray, or `address` / RAY_ADDRESS; "local": in this process)
    from `cfg` and stops it after. `fast` pushes media as fast as the models
    take it instead of at real-time pace. Raises FileNotFoundError or
    ValueError naming the problem for a missing, undecodable or audio-less file.
    """
    probe(path, need_audio=True)

    async def body(b: Backend) -> dict[str, Any]:
        return await replay_file(b, path, fast, out_jsonl, print_fn, session, speaker, max_fps, vectors_out, collect)

    return _run_on(cfg, backend, address, pipeline, print_fn, body)


def run_files(
    cfg: Config,
    paths: Sequence[Union[str, Path]],
    fast: bool = False,
    out_dir: Optional[Union[str, Path]] = None,
    print_fn: Optional[PrintFn] = print,
    *,
    pipeline: Optional[Backend] = None,
    backend: str = "ray",
    address: Optional[str] = None,
    speaker: Optional[str] = "A",
    max_fps: float = 10.0,
    vectors_dir: Optional[Union[str, Path]] = None,
    collect: Optional[list[dict[str, Any]]] = None,
) -> list[dict[str, Any]]:
    """Replay several files through one backend, one session each, in order; a summary per file.

    Loading the models costs far more than a short file, so a batch of files
    shares one backend. With `out_dir`, file k's events go to
    out_dir/<session k>.jsonl (and with `vectors_dir`, its encoder vectors to
    vectors_dir/<session k>.npz). Every file is probed before anything starts.
    """
    for p in paths:
        probe(p, need_audio=True)
    sessions = unique_sessions(paths)

    async def body(b: Backend) -> list[dict[str, Any]]:
        out = []
        for p, session in zip(paths, sessions):
            jsonl = Path(out_dir) / f"{session}.jsonl" if out_dir is not None else None
            npz = Path(vectors_dir) / f"{session}.npz" if vectors_dir is not None else None
            out.append(await replay_file(b, p, fast, jsonl, print_fn, session, speaker, max_fps, npz, collect))
        return out

    return _run_on(cfg, backend, address, pipeline, print_fn, body)


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_SPEECH = 0, 1, 2, 3  # documented in `run --help` (magtkd_stream/cli.py)


def run_file_cli(cfg: Config, args: Any) -> int:
    """`magtkd-stream run FILE [FILE ...]`; returns one of the EXIT_* statuses."""
    files = args.file if isinstance(args.file, (list, tuple)) else [args.file]
    out_dir = getattr(args, "out_dir", None)
    vectors_dir = getattr(args, "vectors_dir", None)
    report_dir = getattr(args, "report", None)
    kind = getattr(args, "backend", None) or "ray"
    collected: Optional[list[dict[str, Any]]] = [] if report_dir is not None else None
    try:
        if len(files) > 1 and args.out is not None:
            raise ValueError("--out names one JSONL file; with several files use --out-dir DIR")
        if kind == "local" and args.address:
            raise ValueError("--address names a Ray cluster; --backend local runs without Ray")
        if len(files) == 1 and out_dir is None and vectors_dir is None:
            summaries = [run_file(cfg, files[0], fast=args.fast, out_jsonl=args.out, address=args.address,
                                  backend=kind, speaker=args.speaker or "A", collect=collected)]
        else:
            summaries = run_files(cfg, files, fast=args.fast, out_dir=out_dir, address=args.address, backend=kind,
                                  speaker=args.speaker or "A", vectors_dir=vectors_dir, collect=collected)
    except (FileNotFoundError, ValueError) as exc:
        print(f"magtkd-stream run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if collected is not None:
        from magtkd_stream.report import write_report

        title = f"magtkd-stream run {' '.join(Path(f).name for f in files)}"[:200]
        page = write_report(collected, Path(report_dir), title,
                            {"files": [str(f) for f in files], "fast": bool(args.fast), "backend": kind})
        print(f"report written to {page}")
    silent = [(f, s) for f, s in zip(files, summaries) if s.get("utterances", 0) == 0]
    for f, s in silent:
        print(f"magtkd-stream run: {f}: no speech found in {s.get('media_s', 0):.1f} s of audio (the voice "
              "detector heard no utterance, so nothing was recognised)", file=sys.stderr)
    if any(0 < s.get("utterances", 0) <= s.get("failed", 0) for s in summaries):
        return EXIT_FAILED
    return EXIT_NO_SPEECH if silent else EXIT_OK
