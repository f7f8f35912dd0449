"""build_encoder picks each modality's class from config fields alone."""

from __future__ import annotations

import numpy as np
import pytest

from magtkd_stream.config import load_config
from magtkd_stream.encoders import AudioInput, TextInput, VideoInput, build_encoder


def test_tiny_profile_builds_full_profile_classes_and_encodes() -> None:
    cfg = load_config("tiny")
    items = {
        "text": [TextInput("Ann", "I can't believe it!", [("Bob", "Guess what.")])],
        "audio": [AudioInput(np.random.default_rng(0).uniform(-0.3, 0.3, 8000).astype(np.float32))],
        "video": [VideoInput([np.full((40, 48, 3), 90, np.uint8)] * 3)],
    }
    names = {"text": "PromptTextEncoder", "audio": "HFAudioEncoder", "video": "HFVideoEncoder"}
    for modality, batch in items.items():
        enc = build_encoder(modality, cfg)
        assert type(enc).__name__ == names[modality]
        out = enc.encode(batch)
        assert out.vectors.shape == (1, enc.dim) and bool(out.present[0])


def test_kind_switches_the_class_without_profile_names() -> None:
    cfg = load_config(
        "tiny",
        ["encoders.video.kind=face_cnn", "encoders.video.model=asset:face_cnn.safetensors",
        "encoders.video.random_init=null"])
    enc = build_encoder("video", cfg)
    assert type(enc).__name__ == "FaceCNNEncoder"
    blank = enc.encode([VideoInput([np.zeros((120, 160, 3), np.uint8)])])
    assert not bool(blank.present[0])


def test_unknown_modality_is_named() -> None:
    with pytest.raises(ValueError, match="smell"):
        build_encoder("smell", load_config("tiny"))
