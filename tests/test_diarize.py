"""Online diarization: causal speaker labels from speaker embeddings, the clustering rules and the real encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magtkd_stream.config import ConfigError, DiarizeConfig, load_config
from magtkd_stream.names import SAMPLE_RATE
from magtkd_stream.streaming.diarize import OnlineDiarizer, SpeakerEmbedder, speaker_labels
from shared_data import data_dir
from speech import speech_bounds, synth_speech


class TableEmbedder:
    """Test double: the 'embedding' of an utterance is looked up by its first sample (isolates the clustering)."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        self.table = table
        self.calls = 0

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        self.calls += 1
        v = np.asarray(self.table[int(audio[0])], dtype=np.float32)
        return v / np.linalg.norm(v)


def clip(key: int, seconds: float = 2.0) -> np.ndarray:
    a = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    a[0] = key
    return a


def test_labels_follow_the_alphabet_or_number_a_name() -> None:
    assert speaker_labels("A", 3) == ["A", "B", "C"]
    assert speaker_labels("Y", 3) == ["Y", "Z", "A"]
    assert speaker_labels("Ann", 3) == ["Ann", "Ann 2", "Ann 3"]


def test_voices_get_stable_labels_in_order_of_appearance() -> None:
    emb = TableEmbedder({1: [1, 0, 0], 2: [0, 1, 0], 3: [0.95, 0.1, 0], 4: [0.05, 1, 0]})
    d = OnlineDiarizer(DiarizeConfig(enabled=True, threshold=0.75), emb)
    got = [d.assign(clip(k)) for k in (1, 2, 3, 4, 1)]
    assert got == ["A", "B", "A", "B", "A"]
    assert d.speakers == 2


def test_speaker_cap_short_utterances_and_peek() -> None:
    emb = TableEmbedder({1: [1, 0, 0], 2: [0, 1, 0], 3: [0, 0, 1], 4: [0.6, 0.8, 0]})
    d = OnlineDiarizer(DiarizeConfig(enabled=True, threshold=0.9, max_speakers=2, min_new_s=1.0), emb)
    assert d.assign(clip(1)) == "A"
    assert d.assign(clip(2, seconds=0.5)) == "A", "too short to open a speaker: the nearest one"
    assert d.assign(clip(2)) == "B"
    assert d.assign(clip(3)) in ("A", "B") and d.speakers == 2, "max_speakers caps the count"
    before = d.speakers, [s.copy() for s in d._sums]
    assert d.peek(clip(4)) == "B"
    assert d.speakers == before[0] and all(np.array_equal(a, b) for a, b in zip(d._sums, before[1]))


def test_config_is_checked_with_its_key() -> None:
    with pytest.raises(ConfigError, match="stream.diarize.max_speakers"):
        load_config("tiny", ["stream.diarize.max_speakers=0"])
    with pytest.raises(ConfigError, match="stream.diarize.colour"):
        load_config("tiny", ["stream.diarize.colour=1"])
    assert load_config("tiny", ["stream.diarize.enabled=true"]).stream.diarize.enabled is True


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    pytest.importorskip("resemblyzer")
    return SpeakerEmbedder()


def test_two_synthetic_voices_are_told_apart(embedder: SpeakerEmbedder) -> None:
    lines = ["I really did not expect to see you here today.", "Neither did I, the train was late again.",
             "Well, shall we get a coffee before the meeting?", "Yes, and then we can talk about the plan."]
    voices = ["en-us+f3", "en-gb", "en-us+f3", "en-gb"]
    d = OnlineDiarizer(DiarizeConfig(enabled=True), embedder)
    got = [d.assign(synth_speech(text, voice)) for text, voice in zip(lines, voices)]
    assert got == ["A", "B", "A", "B"]


def test_librispeech_speakers_are_attributed(embedder: SpeakerEmbedder) -> None:
    """Three real speakers, three clips each, interleaved: every clip gets its speaker's label."""
    folder = data_dir() / "speakers" / "librispeech_multi"
    if not folder.is_dir():
        pytest.skip("shared data speakers/librispeech_multi not found")
    sf = pytest.importorskip("soundfile")
    by_speaker: dict[str, list[Path]] = {}
    for f in sorted(folder.glob("*.flac")):
        by_speaker.setdefault(f.name.split("-")[0], []).append(f)
    chosen = sorted(by_speaker)[:3]
    order = [by_speaker[s][k] for k in range(3) for s in chosen]
    d = OnlineDiarizer(DiarizeConfig(enabled=True), embedder)
    got = [d.assign(sf.read(str(f), dtype="float32")[0]) for f in order]
    truth = [f.name.split("-")[0] for f in order]
    mapping = {t: g for t, g in zip(truth, got)}
    assert len(set(mapping.values())) == 3 and [mapping[t] for t in truth] == got, list(zip(truth, got))


def test_names_label_speakers_in_order_of_appearance() -> None:
    emb = TableEmbedder({1: [1, 0, 0], 2: [0, 1, 0], 3: [0, 0, 1]})
    d = OnlineDiarizer(DiarizeConfig(enabled=True, names=["Ana", "B"], max_speakers=3), emb)
    assert [d.assign(clip(k)) for k in (2, 1, 3, 2)] == ["Ana", "B", "A", "Ana"], "made-up labels avoid names"
    with pytest.raises(ConfigError, match="stream.diarize.names"):
        load_config("tiny", ["stream.diarize.names=[Ana, Ben, Cy]", "stream.diarize.max_speakers=2"])


# ---------------------------------------------------------------- a change of voice inside one segment


class PartialsEmbedder(TableEmbedder):
    """Test double with partial embeddings: each 1.6 s window's 'voice' is the first sample of the 0.5 s block its
    middle falls in (isolates the change detection from the encoder)."""

    def partials(self, audio: np.ndarray, rate: float = 2.0):  # type: ignore[no-untyped-def]
        step, win = int(SAMPLE_RATE / rate), int(1.6 * SAMPLE_RATE)
        spans = [(s, min(s + win, len(audio))) for s in range(0, max(1, len(audio) - win + 1), step)]
        vecs = []
        for s, e in spans:
            mid = (s + e) // 2
            v = np.asarray(self.table[int(audio[mid - mid % (SAMPLE_RATE // 2)])], np.float32)
            vecs.append(v / np.linalg.norm(v))
        return np.stack(vecs), spans


def voices(*parts: tuple[int, float]) -> np.ndarray:
    """Audio whose every 0.5 s block starts with its voice's key: (key, seconds) in order."""
    out = []
    for key, seconds in parts:
        a = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        a[:: SAMPLE_RATE // 2] = key
        out.append(a)
    return np.concatenate(out)


def test_a_change_of_voice_inside_a_segment_cuts_it_where_the_voice_changes() -> None:
    emb = PartialsEmbedder({1: [1.0, 0.0, 0.0], 2: [0.0, 1.0, 0.0], 3: [0.9, 0.1, 0.0]})
    d = OnlineDiarizer(DiarizeConfig(enabled=True, split_min_s=3.0), emb)
    audio = voices((1, 3.0), (2, 3.0))
    pieces = d.split(audio)
    assert len(pieces) == 2 and pieces[0].start == 0 and pieces[1].end == len(audio)
    assert abs(pieces[0].end - 3 * SAMPLE_RATE) <= SAMPLE_RATE // 2, pieces[0].end / SAMPLE_RATE
    assert d.speakers == 0, "looking for a change commits nothing"
    assert d.assign(audio[: pieces[0].end]) == "A"
    assert len(d.split(voices((1, 6.0)))) == 1  # one voice all along
    assert len(d.split(voices((1, 1.0), (2, 1.5)))) == 1  # shorter than split_min_s: never searched
    # a known speaker whose voice moves (3 is close to 1) is not a change of speaker
    assert len(d.split(voices((1, 3.0), (3, 3.0)))) == 1
    off = OnlineDiarizer(DiarizeConfig(enabled=True, split=False), emb)
    assert len(off.split(audio)) == 1


def test_the_real_encoder_splits_two_voices_spoken_without_a_pause(embedder: SpeakerEmbedder) -> None:
    first = synth_speech("Honestly I was not expecting any of this, and now I really do not know what to say.",
                         voice="en-us+m3")
    first = first[: int(speech_bounds(first)[1] * SAMPLE_RATE) + 160]
    second = synth_speech("Well that is fine by me, we can talk about it again tomorrow after breakfast.",
                          voice="en-us+f3")
    d = OnlineDiarizer(DiarizeConfig(enabled=True), embedder)
    pieces = d.split(np.concatenate([first, second]))
    assert len(pieces) == 2, "two voices back to back are two utterances"
    assert abs(pieces[0].end - len(first)) <= 0.8 * SAMPLE_RATE, (pieces[0].end, len(first))
    labels = [d.assign(np.concatenate([first, second])[p.start:p.end]) for p in pieces]
    assert labels == ["A", "B"]
    same = synth_speech("The weather is very nice today in London, and the trains are on time for once.",
                        voice="en-us+m3")
    assert len(d.split(np.concatenate([first, same]))) == 1, "the same voice saying two things stays whole"
