"""Checkpoint files round-trip exactly and refuse to load into the wrong model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magtkd_stream.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from magtkd_stream.config import load_config
from magtkd_stream.labels import IEMOCAP_LABELS, MELD_LABELS


def _modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"text_head": torch.nn.Linear(4, 3), "magt": torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())}


def test_round_trip_restores_weights_config_labels(tmp_path: Path) -> None:
    cfg = load_config("tiny", ["magt.window=3"])
    mods = _modules()
    path = save_checkpoint(tmp_path / "m.safetensors", mods, cfg, MELD_LABELS, extra={"epoch": 4})
    ck = load_checkpoint(path, expect_labels=MELD_LABELS, expect_profile="tiny")
    assert ck.config == cfg
    assert ck.labels == list(MELD_LABELS)
    assert ck.profile == "tiny"
    assert ck.extra == {"epoch": 4}
    fresh = torch.nn.Linear(4, 3)
    fresh.load_state_dict(ck.state_dict("text_head"))
    assert torch.equal(fresh.weight, mods["text_head"].weight)
    assert set(ck.state_dict("magt")) == {"0.weight", "0.bias"}


def test_refuses_other_labels_and_profile(tmp_path: Path) -> None:
    cfg = load_config("tiny")
    path = save_checkpoint(tmp_path / "m.safetensors", _modules(), cfg, MELD_LABELS)
    with pytest.raises(CheckpointError, match="labels"):
        load_checkpoint(path, expect_labels=IEMOCAP_LABELS)
    with pytest.raises(CheckpointError, match="profile 'tiny'"):
        load_checkpoint(path, expect_profile="lite")


def test_refuses_missing_and_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(bad)


def test_refuses_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(path)


def test_magt_settings_that_a_checkpoint_overrides_are_named() -> None:
    """A checkpoint rebuilds MAGT as trained: the fusion actor warns about profile magt values it cannot honour."""
    from magtkd_stream.model.fusion import ignored_magt_settings

    lite = load_config("lite")
    assert ignored_magt_settings(lite.magt, lite.magt) == {}
    changed = load_config("lite", ["magt.window=4", "magt.dropout=0.0"])
    assert ignored_magt_settings(changed.magt, lite.magt) == {
        "window": (4, lite.magt.window), "dropout": (0.0, lite.magt.dropout)}
