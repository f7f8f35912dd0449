"""The diarization study's scoring: DER against hand-made truth, turn matching, RTTM reading, composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magtkd_stream.names import SAMPLE_RATE
from training.studies.diarization import Turn, compose, der, read_rttm, read_uem, render, turn_pairs

pytest.importorskip("pyannote.metrics")

TRUTH = [(0.0, 4.0, "ann"), (5.0, 9.0, "bob"), (10.0, 14.0, "ann")]


def test_der_is_zero_for_the_truth_under_other_names_and_counts_confusion() -> None:
    assert der(TRUTH, [(s, e, {"ann": "A", "bob": "B"}[k]) for s, e, k in TRUTH])["diarization error rate"] == 0.0
    one_label = der(TRUTH, [(s, e, "A") for s, e, _ in TRUTH])
    # bob's 4 s are confused, less the collar: 0.25 s centred on each of his turn's two edges
    assert one_label["confusion"] == pytest.approx(3.75, abs=0.01)
    assert one_label["diarization error rate"] == pytest.approx(3.75 / one_label["total"], abs=1e-3)
    missed = der(TRUTH, [(0.0, 4.0, "A")])
    assert missed["missed detection"] > 6.0 and missed["false alarm"] == 0.0


def test_turns_take_the_label_of_the_utterance_they_overlap_most() -> None:
    turns = [Turn("ann", np.zeros(1), 0.0, 4.0), Turn("bob", np.zeros(1), 5.0, 9.0), Turn("ann", np.zeros(1), 20, 21)]
    hyp = [(0.1, 3.0, "A"), (2.9, 6.0, "B"), (6.0, 9.0, "C")]
    assert turn_pairs(turns, hyp) == [("ann", "A"), ("bob", "C")], "a turn nobody heard is left out"


def test_rttm_and_uem_are_read(tmp_path: Path) -> None:
    (tmp_path / "x.rttm").write_text("SPEAKER f1 1 0.500 1.250 <NA> <NA> spk1 <NA> <NA>\n"
                                     "SPEAKER f1 1 2.000 1.000 <NA> <NA> spk2 <NA> <NA>\n")
    (tmp_path / "x.uem").write_text("f1 NA 0.000 30.000\n")
    assert read_rttm(tmp_path / "x.rttm") == {"f1": [(0.5, 1.75, "spk1"), (2.0, 3.0, "spk2")]}
    assert read_uem(tmp_path / "x.uem") == {"f1": (0.0, 30.0)}


def test_composition_is_seeded_and_never_repeats_a_speaker_in_a_row(tmp_path: Path) -> None:
    clips = {s: [np.full(SAMPLE_RATE, k + 0.1 * j, np.float32) for j in range(4)] for k, s in enumerate("abcd")}
    a, b = compose(clips, 3, 3, 4, seed=5), compose(clips, 3, 3, 4, seed=5)
    assert [[t.speaker for t in c] for c in a] == [[t.speaker for t in c] for c in b]
    for convo in a:
        assert len(convo) == 12 and len({t.speaker for t in convo}) == 3
        assert all(x.speaker != y.speaker for x, y in zip(convo, convo[1:]))
    render(a[0], tmp_path / "c.wav")
    assert a[0][0].start == pytest.approx(0.8) and a[0][1].start == pytest.approx(a[0][0].end + 0.8)
    assert (tmp_path / "c.wav").stat().st_size > 12 * SAMPLE_RATE * 2
