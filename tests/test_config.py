"""Config files and overrides: the profiles load, and every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from magtkd_stream.config import (
    Config,
    ConfigError,
    StreamConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    read_config_tree,
)


@pytest.mark.parametrize("profile", ["lite", "full", "tiny"])
def test_profiles_load_and_round_trip(profile: str) -> None:
    cfg = load_config(profile)
    assert isinstance(cfg, Config)
    assert cfg.profile == profile
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_override_sets_nested_value_with_yaml_typing() -> None:
    cfg = load_config("tiny", ["magt.window=7", "encoders.text.max_tokens=64", "kd.tau=1.5"])
    assert cfg.magt.window == 7
    assert cfg.encoders.text.max_tokens == 64
    assert cfg.kd.tau == 1.5


def test_unknown_key_in_override_is_named() -> None:
    with pytest.raises(ConfigError, match=r"magt\.windw"):
        load_config("tiny", ["magt.windw=3"])


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("profile: x\nencoders:\n  text:\n    modle: roberta-large\n")
    with pytest.raises(ConfigError, match=r"encoders\.text\.modle"):
        load_config(path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("magt.window=abc", "magt.window"),
        ("magt.dropout=1.5", "magt.dropout"),
        ("magt.heads=5", "magt.heads"),
        ("encoders.audio.kind=wav2vec", "encoders.audio.kind"),
        ("labels=emotions", "labels"),
        ("encoders.video.image_mean=[0.5]", "encoders.video.image_mean"),
        ("magt=3", "magt"),
        ("seed=true", "seed"),
    ],
)
def test_bad_values_are_named(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert key in str(err.value)


def test_malformed_override_and_missing_profile() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("tiny", ["magt.window"])
    with pytest.raises(ConfigError, match=r"profiles: full, lite, tiny \(training recipes, for magtkd-train: "
                                          r"train_iemocap_full, train_lite"):
        load_config("no-such-profile")


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("profile: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_stream_section_is_typed_and_checked_at_load_time() -> None:
    stream = load_config("tiny", ["stream.batch_wait_ms=5", "stream.vad.pad_ms=100"]).stream
    assert isinstance(stream, StreamConfig) and stream.batch_wait_ms == 5 and stream.vad.pad_ms == 100
    assert stream.actors["asr"].threads == 2  # defaults of the actors not named are kept
    with pytest.raises(ConfigError, match=r"stream\.actors\.txt"):
        load_config("tiny", ["stream.actors.txt.replicas=2"])
    with pytest.raises(ConfigError, match=r"stream\.vad\.threshold"):
        load_config("tiny", ["stream.vad.threshold=2"])


@pytest.mark.parametrize("value, ok", [("null", True), ("0", True), ("4", True), ("-1", False), ("two", False)])
def test_stream_window_is_empty_zero_or_a_count(value: str, ok: bool) -> None:
    """Empty: as the checkpoint was trained; 0: no limit, as magt.window's 0; W: the last W utterances."""
    if ok:
        assert load_config("tiny", [f"stream.window={value}"]).stream.window == (None if value == "null" else int(value))
    else:
        with pytest.raises(ConfigError, match=r"stream\.window: must be an integer >= 0 \(0 = the whole session\)"):
            load_config("tiny", [f"stream.window={value}"])


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_file_inherits_its_base_and_changes_only_what_it_names(tmp_path: Path) -> None:
    _write(tmp_path / "parent.yaml", "base: tiny\nmagt:\n  window: 2\nstream:\n  interim_every_s: 1.5\n")
    child = _write(tmp_path / "child.yaml", "base: parent.yaml\nseed: 5\nmagt:\n  dropout: 0.2\n")
    cfg, tiny = load_config(child), load_config("tiny")
    assert (cfg.seed, cfg.magt.window, cfg.magt.dropout, cfg.stream.interim_every_s) == (5, 2, 0.2, 1.5)
    assert cfg.encoders == tiny.encoders and cfg.magt.d_model == tiny.magt.d_model  # the rest is tiny's
    assert load_config(child, ["magt.window=3"]).magt.window == 3  # --set applies after the chain
    assert "base" not in read_config_tree(child)


def test_a_bad_base_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: base: 'no-such' not found .*known: .*lite"):
        load_config(_write(tmp_path / "missing.yaml", "base: no-such\n"))
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"comes back to itself \(a\.yaml -> b\.yaml -> a\.yaml\)"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"base: expected a profile name"):
        load_config(_write(tmp_path / "num.yaml", "base: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown key magt\.windw"):  # keys of the merged tree are still checked
        load_config(_write(tmp_path / "typo.yaml", "base: tiny\nmagt:\n  windw: 2\n"))


def test_an_installed_copy_of_the_profiles_is_found_without_the_source_tree(tmp_path: Path, monkeypatch) -> None:
    """A wheel puts configs/ under <prefix>/share/magtkd-stream/configs; the loader looks there when it has no tree."""
    import magtkd_stream.config.loader as loader

    installed = tmp_path / "prefix" / "share" / "magtkd-stream" / "configs"
    installed.mkdir(parents=True)
    for name in ("tiny.yaml", "lite.yaml"):
        (installed / name).write_text((loader.CONFIG_DIR / name).read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.delenv(loader.CONFIG_DIR_ENV, raising=False)
    monkeypatch.setattr(loader, "__file__", str(tmp_path / "site" / "magtkd_stream" / "config" / "loader.py"))
    monkeypatch.setattr(loader.sysconfig, "get_path", lambda name: str(tmp_path / "prefix"))
    assert loader.find_config_dir() == installed
    monkeypatch.setenv(loader.CONFIG_DIR_ENV, str(tmp_path / "mine"))
    assert loader.find_config_dir() == tmp_path / "mine"


def test_the_wheel_carries_the_profiles(tmp_path: Path) -> None:
    """pyproject's data-files: every configs/*.yaml goes into the wheel, where find_config_dir looks."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["data-files"]
    assert data_files == {"share/magtkd-stream/configs": ["configs/*.yaml"]}
    assert {p.name for p in (root / "configs").glob("*.yaml")} >= {"lite.yaml", "tiny.yaml", "full.yaml"}
