"""Config files and overrides: the profiles load, and every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from magtkd_stream.config import Config, ConfigError, config_from_dict, config_to_dict, load_config


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


def test_stream_section_is_checked_at_load_time() -> None:
    assert load_config("tiny", ["stream.batch_wait_ms=5"]).stream == {"batch_wait_ms": 5}
    with pytest.raises(ConfigError, match=r"stream\.actors\.txt"):
        load_config("tiny", ["stream.actors.txt.replicas=2"])
