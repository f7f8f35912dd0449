"""Label sets and the mappings of RAVDESS and FER2013 onto MELD."""

from __future__ import annotations

import pytest

from magtkd_stream import labels as L


def test_label_set_sizes() -> None:
    assert len(L.label_set("meld")) == 7
    assert len(L.label_set("iemocap")) == 6
    with pytest.raises(ValueError, match="known"):
        L.label_set("ravdess8")


def test_ravdess_maps_calm_and_neutral_to_neutral() -> None:
    idx = L.index_map(L.RAVDESS_LABELS, L.RAVDESS_TO_MELD, L.MELD_LABELS)
    names = [L.MELD_LABELS[i] for i in idx]
    assert names == ["neutral", "neutral", "joy", "sadness", "anger", "fear", "disgust", "surprise"]


def test_fer_maps_one_to_one_onto_meld() -> None:
    idx = L.index_map(L.FER2013_LABELS, L.FER2013_TO_MELD, L.MELD_LABELS)
    assert sorted(idx) == list(range(7))


def test_unmappable_label_is_named() -> None:
    with pytest.raises(ValueError, match="calm"):
        L.index_map(["calm"], {}, L.MELD_LABELS)


def test_ravdess_file_names() -> None:
    assert L.ravdess_label_from_filename("speech_16k/03-01-05-01-02-01-12.flac") == "angry"
    with pytest.raises(ValueError, match="emotion code"):
        L.ravdess_label_from_filename("03-01-09-01-02-01-12.flac")
    with pytest.raises(ValueError, match="7 dash"):
        L.ravdess_label_from_filename("clip.flac")
