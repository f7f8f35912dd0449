"""Run folders: everything one training run leaves behind, and the resume state.

Layout of runs/<name>-<YYYYmmdd-HHMMSS>/:
    config.yaml          the resolved configuration (config_to_dict)
    run.json             seed, start time, command line, library versions
    train.log            the run's log (setup_logging)
    metrics/<name>.json  scores (history, dev per window, test)
    figures/<name>.png   confusion matrices
    checkpoints/last[-tag].pt             resume state: model, optimizer, scheduler, RNG, epoch
    checkpoints/best[-tag].safetensors    the selected model (magtkd_stream.model.checkpoint format)
Also the small pieces every entry point needs: seeding, logging set-up and progress bars.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypeVar

import numpy as np
import torch
import yaml

from magtkd_stream.config import Config, config_from_dict, config_to_dict

logger = logging.getLogger(__name__)
T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar with rate and ETA. Shown on terminals; MAGTKD_PROGRESS=1 forces it on, =0 off."""
    from tqdm.auto import tqdm

    flag = os.environ.get("MAGTKD_PROGRESS")
    disable = None if flag is None else flag.strip() in ("0", "false", "no")
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=disable)


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm, so log lines do not tear progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(run_dir: str | Path | None = None, verbose: bool = False) -> None:
    """Configure the root logger for an entry point: console (INFO, DEBUG if verbose) and, when a run
    folder is given, its train.log (DEBUG). Calling again replaces the handlers set up before."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_magtkd", False):
            root.removeHandler(h)
            h.close()
    console = _TqdmHandler()
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handlers: list[logging.Handler] = [console]
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(run_dir) / "train.log", encoding="utf-8")
        file.setLevel(logging.DEBUG)
        file.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(file)
    for h in handlers:
        h._magtkd = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG)
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RunFolder:
    """One run's directory; see the module docstring for what goes where."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, root: str | Path = "runs", name: str = "run") -> "RunFolder":
        """A new folder root/<name>-<timestamp> (suffixed -2, -3, ... if that exists already)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"run name must be a plain folder name, got {name!r}")
        base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """An existing run folder (to resume or evaluate it)."""
        if not Path(path).is_dir():
            raise FileNotFoundError(f"run folder {path} does not exist")
        return cls(path)

    # ------------------------------------------------------------- config, seed
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def write_config(self, cfg: Config) -> Path:
        """Save the resolved config (config.yaml) and the seed, time and command line (run.json)."""
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
        self.config_path.write_text(text, encoding="utf-8")
        info = {
            "seed": cfg.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": list(sys.argv),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
        }
        (self.path / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        return self.config_path

    def read_config(self) -> Config:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.config_path} does not exist; this is not a run folder")
        return config_from_dict(yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {})

    # ------------------------------------------------------------ metrics, figures
    def metrics_path(self, name: str) -> Path:
        return self.path / "metrics" / f"{name}.json"

    def figure_path(self, name: str) -> Path:
        return self.path / "figures" / f"{name}.png"

    def save_metrics(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.metrics_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False), encoding="utf-8")
        tmp.replace(path)
        return path

    def load_metrics(self, name: str) -> dict[str, Any]:
        return json.loads(self.metrics_path(name).read_text(encoding="utf-8"))

    # ------------------------------------------------------------- checkpoints
    def last_checkpoint(self, tag: str = "") -> Path:
        return self.path / "checkpoints" / (f"last-{tag}.pt" if tag else "last.pt")

    def best_checkpoint(self, tag: str = "") -> Path:
        return self.path / "checkpoints" / (f"best-{tag}.safetensors" if tag else "best.safetensors")

    def save_state(
        self,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        best: Mapping[str, Any],
        tag: str = "",
        extra: Optional[Mapping[str, Any]] = None,
    ) -> Path:
        """Write the resume state after `epoch` (0-based, completed) epochs' worth of training."""
        state = {
            "epoch": int(epoch),
            "best": dict(best),
            "extra": dict(extra or {}),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
        }
        path = self.last_checkpoint(tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    def load_state(
        self,
        model: Optional[torch.nn.Module] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Any = None,
        tag: str = "",
    ) -> Optional[dict[str, Any]]:
        """Restore the resume state into the given objects and the RNGs.

        Returns {"epoch", "best", "extra"} or None when the run has no resume state.
        """
        path = self.last_checkpoint(tag)
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if model is not None:
            model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        logger.info("resumed from %s (epoch %d done)", path, state["epoch"])
        return {"epoch": state["epoch"], "best": state["best"], "extra": state["extra"]}


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate needs tuples all the way down; a round trip may hand back lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
