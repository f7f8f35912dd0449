"""The Dockerfile cannot be built here (no Docker daemon), so check what can be: every file it copies exists,
torch comes at the pinned version from the CPU index, and its command line is one `magtkd-stream` accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from magtkd_stream.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^([A-Z]+)\s+(.*)$", text, re.M)]


def test_every_copied_path_exists_and_nothing_heavy_is_sent_to_the_build() -> None:
    copies = [args.split()[:-1] for op, args in _instructions() if op == "COPY"]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_torch_is_the_pinned_cpu_build_and_the_command_parses() -> None:
    runs = " ".join(args for op, args in _instructions() if op == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs and "constraints.txt" in runs
    assert re.search(r"^torch==\d", (ROOT / "constraints.txt").read_text(), re.M)
    entry = json.loads(dict(_instructions())["ENTRYPOINT"])
    cmd = json.loads(dict(_instructions())["CMD"])
    assert entry == ["magtkd-stream"]
    args = build_parser().parse_args(cmd)
    assert args.host == "0.0.0.0" and args.port == 8765 and args.metrics_port == 9100
