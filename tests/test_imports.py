"""The library stays light: no Ray, websockets, faster-whisper or OpenCV at module top."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("ray", "websockets", "faster_whisper", "cv2")

_SCRIPT = """
import importlib, pkgutil, sys
import magtkd_stream
names = [m.name for m in pkgutil.walk_packages(magtkd_stream.__path__, "magtkd_stream.")]
for name in names:
    importlib.import_module(name)
heavy = [m for m in {heavy!r} if m in sys.modules]
print(len(names), ",".join(heavy))
"""


def test_library_imports_without_heavy_dependencies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(heavy=HEAVY)], capture_output=True, text=True, check=True
    ).stdout.split()
    count = int(out[0])
    loaded = out[1] if len(out) > 1 else ""
    assert count >= 5, "walked too few modules: the check would prove nothing"
    assert loaded == "", f"module-top imports of {loaded} in magtkd_stream"
