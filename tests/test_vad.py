"""Streaming Silero VAD segmentation of synthesized speech."""

from __future__ import annotations

import numpy as np
import pytest

from magtkd_stream.config import ConfigError
from magtkd_stream.config import VADConfig
from magtkd_stream.streaming.vad import Utterance, VADSegmenter
from speech import speech_bounds, synth_speech

pytest.importorskip("faster_whisper")
pytest.importorskip("onnxruntime")

SR = 16000
FIRST = "Hello, my name is John and I like to eat pizza."
SECOND = "The weather is very nice today in London."
TOLERANCE_S = 0.3


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def noisy(x: np.ndarray, seed: int = 0, level: float = 0.003) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, level, x.size), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def two_sentences() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """0.6 s silence, sentence, 1 s silence, sentence, 0.8 s silence (low noise); true speech spans."""
    parts = [silence(0.6), synth_speech(FIRST), silence(1.0), synth_speech(SECOND), silence(0.8)]
    truth, t = [], 0.0
    for p in parts:
        if p.any():
            s, e = speech_bounds(p)
            truth.append((t + s, t + e))
        t += p.size / SR
    return noisy(np.concatenate(parts)), truth


def trimmed(text: str) -> np.ndarray:
    """Synthesized speech without espeak's own leading and trailing silence."""
    x = synth_speech(text)
    s, e = speech_bounds(x)
    return x[int(s * SR) : int(e * SR)]


def run(seg: VADSegmenter, audio: np.ndarray, sizes: list[int]) -> list[Utterance]:
    out, i, k = [], 0, 0
    while i < audio.size:
        n = sizes[k % len(sizes)]
        out += seg.push(audio[i : i + n])
        i, k = i + n, k + 1
    return out + seg.flush()


def spans(utts: list[Utterance]) -> list[tuple[float, float]]:
    return [(u.start_s, u.end_s) for u in utts]


def test_two_sentences_give_two_utterances_near_the_truth(two_sentences) -> None:
    audio, truth = two_sentences
    utts = run(VADSegmenter(), audio, [320])
    assert len(utts) == 2, spans(utts)
    for u, (s, e) in zip(utts, truth):
        assert abs(u.start_s - s) <= TOLERANCE_S, (u.start_s, s)
        assert abs(u.end_s - e) <= TOLERANCE_S, (u.end_s, e)
        assert not u.cut
        i0 = round(u.start_s * SR)
        assert u.audio.dtype == np.float32 and u.audio.size == round(u.end_s * SR) - i0
        np.testing.assert_array_equal(u.audio, audio[i0 : i0 + u.audio.size])


def test_segmentation_does_not_depend_on_push_sizes(two_sentences) -> None:
    audio, _ = two_sentences
    reference = run(VADSegmenter(), audio, [320])  # 20 ms
    rng = np.random.default_rng(3)
    for sizes in ([592], [SR], [7, 1000, 33333], rng.integers(1, 9000, size=50).tolist()):
        utts = run(VADSegmenter(), audio, sizes)
        assert spans(utts) == spans(reference), sizes
        for a, b in zip(utts, reference):
            np.testing.assert_array_equal(a.audio, b.audio)


def test_utterance_is_emitted_after_the_silence_hangover(two_sentences) -> None:
    audio, truth = two_sentences
    seg = VADSegmenter(VADConfig(min_silence_ms=300))
    first_end = int((truth[0][1] + 0.15) * SR)
    assert seg.push(audio[:first_end]) == []  # still within the hangover
    got = seg.push(audio[first_end : int((truth[0][1] + 0.7) * SR)])
    assert len(got) == 1 and got[0].end_s < truth[1][0]


def test_silence_and_noise_only_give_nothing() -> None:
    seg = VADSegmenter()
    assert run(seg, noisy(silence(4.0), seed=5, level=0.01), [SR // 10]) == []


def test_flush_emits_the_open_utterance() -> None:
    sentence = trimmed(FIRST)
    speech = noisy(np.concatenate([silence(0.5), sentence[: int(2.0 * SR)]]))  # stops mid-sentence
    seg = VADSegmenter()
    assert seg.push(speech) == []
    utts = seg.flush()
    assert len(utts) == 1
    assert utts[0].end_s == pytest.approx(speech.size / SR)
    assert abs(utts[0].start_s - 0.5) <= TOLERANCE_S
    np.testing.assert_array_equal(utts[0].audio, speech[round(utts[0].start_s * SR) :])
    assert seg.flush() == []


def test_long_speech_is_cut_at_max_utterance() -> None:
    gap = silence(0.12)  # shorter than the hangover: one continuous stretch of speech
    speech = np.concatenate([trimmed(FIRST), gap, trimmed(SECOND), gap] * 3)
    assert speech.size / SR > 14
    cfg = VADConfig(max_utterance_s=5.0)
    utts = run(VADSegmenter(cfg), noisy(np.concatenate([silence(0.3), speech, silence(1.0)])), [SR // 4])
    assert len(utts) >= 3
    assert any(u.cut for u in utts)
    assert all(u.end_s - u.start_s <= cfg.max_utterance_s + 1e-6 for u in utts)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(utts, utts[1:]))
    covered = sum(u.end_s - u.start_s for u in utts)
    assert covered >= 0.9 * speech.size / SR


def test_sessions_keep_their_own_state(two_sentences) -> None:
    audio, _ = two_sentences
    alone = run(VADSegmenter(), audio, [SR // 5])
    a, b = VADSegmenter(), VADSegmenter(time_offset_s=100.0)
    out_a, out_b = [], []
    other = noisy(silence(audio.size / SR), seed=9, level=0.2)  # loud noise fed to a second session
    for i in range(0, audio.size, SR // 5):
        out_a += a.push(audio[i : i + SR // 5])
        out_b += b.push(other[i : i + SR // 5])
    out_a += a.flush()
    assert spans(out_a) == spans(alone)
    assert b.position_s == pytest.approx(100.0 + audio.size / SR)


def test_bad_input_and_config_are_rejected() -> None:
    seg = VADSegmenter()
    with pytest.raises(ValueError, match="float32"):
        seg.push(np.zeros(SR, dtype=np.int16))
    with pytest.raises(ValueError, match="mono"):
        seg.push(np.zeros((SR, 2), dtype=np.float32))
    with pytest.raises(ConfigError, match="vad.threshold"):
        VADConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="vad.max_utterance_s"):
        VADConfig(max_utterance_s=60)


def test_open_speech_shows_the_utterance_still_going_on(two_sentences) -> None:
    audio, truth = two_sentences
    seg = VADSegmenter(VADConfig())
    assert seg.open_speech() is None and seg.open_speech_seconds() is None
    middle = (truth[0][0] + truth[0][1]) / 2
    assert seg.push(audio[: int(middle * SR)]) == []
    start, so_far = seg.open_speech()
    assert abs(start - (truth[0][0] - 0.2)) < TOLERANCE_S  # the start padding is included
    assert so_far.size / SR == pytest.approx(seg.open_speech_seconds(), abs=1e-6)
    assert start + so_far.size / SR <= seg.position_s + 1e-6
    utts = seg.push(audio[int(middle * SR) : int((truth[0][1] + 0.9) * SR)])
    assert len(utts) == 1 and seg.open_speech() is None, "once it ends, nothing is open"
    np.testing.assert_array_equal(utts[0].audio[: so_far.size], so_far)


def test_open_speech_in_a_pause_ends_where_the_final_would(two_sentences) -> None:
    """While the VAD waits out a silence, the open speech stops at the end padding, never at 'now'."""
    audio, truth = two_sentences
    cfg = VADConfig(min_silence_ms=800, pad_ms=100)  # a long hangover: 'now' runs well past speech + padding
    seg = VADSegmenter(cfg)
    waiting = int((truth[0][1] + 0.6) * SR)  # 0.6 s into the silence: not yet ended
    assert seg.push(audio[:waiting]) == []
    start, so_far = seg.open_speech()
    open_end = start + so_far.size / SR
    assert open_end < seg.position_s - 0.3, "the silence waited out is not part of the open speech"
    assert so_far.size / SR == pytest.approx(seg.open_speech_seconds(), abs=1e-6)
    (utt,) = seg.push(audio[waiting : int((truth[0][1] + 1.0) * SR)])
    assert open_end <= utt.end_s + 1e-6
    assert utt.end_s - open_end < 0.05, "the open speech already reached the final's end"
