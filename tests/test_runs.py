"""Run folders: layout, saved config and seed, metrics, logging, and an exact resume state."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from magtkd_stream.config import load_config
from training.runs import RunFolder, seed_everything, setup_logging



def test_create_names_folders_uniquely(tmp_path: Path) -> None:
    a = RunFolder.create(tmp_path, "stage2")
    b = RunFolder.create(tmp_path, "stage2")
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()
    assert a.path.name.startswith("stage2-") and a.path.parent == tmp_path
    with pytest.raises(ValueError, match="plain folder name"):
        RunFolder.create(tmp_path, "../x")
    with pytest.raises(FileNotFoundError):
        RunFolder.open(tmp_path / "nope")


def test_config_seed_and_metrics_round_trip(tmp_path: Path) -> None:
    cfg = load_config("tiny", ["seed=123", "train.stage2.windows=[0,3]"])
    run = RunFolder(tmp_path / "r")
    run.write_config(cfg)
    assert RunFolder.open(run.path).read_config() == cfg
    assert json.loads((run.path / "run.json").read_text())["seed"] == 123
    run.save_metrics("dev", {"weighted_f1": 0.5, "per_class": {"joy": 0.25}})
    assert run.load_metrics("dev") == {"weighted_f1": 0.5, "per_class": {"joy": 0.25}}
    assert run.metrics_path("dev").parent.name == "metrics"
    assert run.best_checkpoint("audio").name == "best-audio.safetensors"
    assert run.last_checkpoint().name == "last.pt"


def _objects() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: object) -> None:
    loss = model(torch.ones(3, 4)).pow(2).sum()  # dropout draws from the torch RNG
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()  # type: ignore[attr-defined]


def test_state_resumes_exactly(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r")
    assert run.load_state() is None
    seed_everything(5)
    model, opt, sched = _objects()
    _step(model, opt, sched)
    run.save_state(0, model, opt, sched, {"epoch": 0, "score": 0.4}, tag="x", extra={"history": [1.5]})
    _step(model, opt, sched)  # the uninterrupted continuation
    want = (model.state_dict(), torch.rand(2), np.random.rand(), random.random(), sched.get_last_lr())

    seed_everything(99)
    model2, opt2, sched2 = _objects()
    state = run.load_state(model2, opt2, sched2, tag="x")
    assert state == {"epoch": 0, "best": {"epoch": 0, "score": 0.4}, "extra": {"history": [1.5]}}
    _step(model2, opt2, sched2)
    got = (model2.state_dict(), torch.rand(2), np.random.rand(), random.random(), sched2.get_last_lr())
    assert all(torch.equal(want[0][k], got[0][k]) for k in want[0])
    assert torch.equal(want[1], got[1]) and want[2:] == got[2:]


def test_seed_everything_repeats() -> None:
    seed_everything(3)
    a = (torch.rand(3), np.random.rand(3), random.random())
    seed_everything(3)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_setup_logging_writes_the_run_log_once(tmp_path: Path) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        setup_logging(tmp_path / "r1")
        setup_logging(tmp_path / "r2", verbose=True)  # replaces, does not stack
        logging.getLogger("training.something").debug("hello %d", 7)
        for h in root.handlers:
            h.flush()
        assert "hello 7" in (tmp_path / "r2" / "train.log").read_text()
        assert "hello 7" not in (tmp_path / "r1" / "train.log").read_text()
        assert sum(isinstance(h, logging.FileHandler) for h in root.handlers if h not in before) == 1
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)


def test_training_curves_draw_either_stage_s_history_and_refuse_an_empty_one(tmp_path: Path) -> None:
    from training.metrics import save_curves_png

    stage2 = [{"epoch": i, "train": {"ce": 2.0 - i / 10, "total": 2.5 - i / 10},
               "dev": {"accuracy": 0.3 + i / 20, "weighted_f1": 0.25 + i / 20, "macro_f1": 0.2 + i / 20}}
              for i in range(4)]
    stage1 = [{"epoch": i, "loss": 1.0 / (i + 1), "dev_weighted_f1": 0.4, "dev_accuracy": 0.5} for i in range(3)]
    for rows, name in ((stage2, "s2.png"), (stage1, "sub/s1.png")):
        path = save_curves_png(rows, tmp_path / name, "title", best_epoch=1)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no epochs"):
        save_curves_png([], tmp_path / "none.png")
