"""Voice augmentation: seeded channels, what each perturbation does to a clip, the AAC round trip."""

from __future__ import annotations

import numpy as np
import pytest

from speech import synth_speech
from training.stage1.audio_augment import AugmentSettings, Channel, aac_round_trip, apply_channel, copy_rng, room_response

SR = 16000


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def test_a_speakers_copy_always_gets_the_same_channel_and_other_copies_differ() -> None:
    s = AugmentSettings()
    a = s.draw(copy_rng(0, "actor03", 1))
    assert a == s.draw(copy_rng(0, "actor03", 1))
    others = {s.draw(copy_rng(0, "actor03", k)) for k in range(6)} | {s.draw(copy_rng(1, "actor03", 1))}
    assert len(others) >= 6
    for ch in others:
        assert s.gain_db[0] <= ch.gain_db <= s.gain_db[1] and ch.aac_kbps in (0, *s.aac_kbps)
        assert ch.speed == 1.0 or s.speed[0] <= ch.speed <= s.speed[1]


def test_each_perturbation_does_what_it_says() -> None:
    speech = synth_speech("The weather is very nice today in London.") * 0.5
    dry = Channel(gain_db=0.0, snr_db=float("inf"), rt60_s=0.0, speed=1.0, aac_kbps=0)
    rng = np.random.default_rng(0)
    assert np.allclose(apply_channel(speech, dry, rng), np.clip(speech, -1, 1), atol=1e-6)
    louder = apply_channel(speech, Channel(6.0, float("inf"), 0.0, 1.0, 0), rng)
    assert _rms(louder) / _rms(speech) == pytest.approx(10 ** (6 / 20), rel=0.02)
    noisy = apply_channel(speech, Channel(0.0, 10.0, 0.0, 1.0, 0), rng)
    snr = 10 * np.log10(_rms(speech) ** 2 / _rms(noisy - speech) ** 2)
    assert snr == pytest.approx(10.0, abs=0.5)
    faster = apply_channel(speech, Channel(0.0, float("inf"), 0.0, 1.1, 0), rng)
    assert faster.size == pytest.approx(speech.size / 1.1, rel=0.01)
    wet = apply_channel(speech, Channel(0.0, float("inf"), 0.5, 1.0, 0), rng)
    assert wet.size == speech.size and not np.allclose(wet, speech, atol=1e-3)
    ir = room_response(0.5, np.random.default_rng(0))
    assert ir[0] == 1.0 and ir.size == 1 + SR // 2 and np.abs(ir[-100:]).max() < 0.01  # decayed by the end
    assert np.all(np.abs(apply_channel(speech * 4, Channel(12.0, 20.0, 0.3, 1.0, 48), rng)) <= 1.0)


def test_the_aac_round_trip_is_aligned_and_lossy() -> None:
    speech = synth_speech("I cannot believe you did that to me.") * 0.5
    back = aac_round_trip(speech, 24)
    assert back.size == speech.size
    corr = float(np.corrcoef(speech, back)[0, 1])
    assert 0.9 < corr < 0.99999  # the same speech, in time, but not the same samples
