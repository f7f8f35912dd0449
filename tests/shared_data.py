"""Where the real data lives for tests: $MAGTKD_DATA, else ../shared/data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    env = os.environ.get("MAGTKD_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
