"""Dataset loaders: real data when ../shared/data is present, small generated fixtures otherwise."""

from __future__ import annotations

import csv
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from magtkd_stream.labels import IEMOCAP_LABELS, MELD_LABELS, RAVDESS_LABELS
from training.data import (
    load_fer2013,
    load_iemocap,
    load_meld,
    load_ravdess_paired,
    load_ravdess_speech,
)
from training.data.meld import CSV_COLUMNS
from shared_data import data_dir


@pytest.fixture(scope="module")
def data() -> Path:
    root = data_dir()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} absent")
    return root


def _write_meld_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or list(CSV_COLUMNS))
        w.writerows(rows)


def _row(n: int, text: str, speaker: str, emotion: str, d: str, u: str) -> list[str]:
    return [str(n), text, speaker, emotion, "neutral", d, u, "1", "1", "00:00:01,000", "00:00:02,500"]


# --- MELD -------------------------------------------------------------------------------


def test_real_meld_counts_and_order(data: Path) -> None:
    ds = load_meld(data / "meld")
    expected = {"train": (9989, 1038), "dev": (1109, 114), "test": (2610, 280)}
    for split, (n_utts, n_dias) in expected.items():
        assert ds.num_utterances(split) == n_utts
        assert len(ds.splits[split]) == n_dias
        assert ds.report.loaded[split] == {"dialogues": n_dias, "utterances": n_utts}
    assert not ds.report.skipped
    assert ds.labels == MELD_LABELS
    first = ds.splits["train"][0]
    assert first.did == "dia0" and first.utterances[0].speaker == "Chandler"
    assert first.utterances[1].text == "You must’ve had your hands full."  # curly quote survives
    for dialogue in ds.splits["test"]:
        ids = [int(u.uid.rsplit("_utt", 1)[1]) for u in dialogue.utterances]
        assert ids == sorted(ids)
    assert all(u.audio is None and u.video is None for u in ds.utterances("dev"))
    assert len({u.uid for s in ds.splits for u in ds.utterances(s)}) == 9989 + 1109 + 2610
    assert ds.label_counts("dev")["neutral"] == 470


def test_meld_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        _row(1, "Second line", "Ross", "joy", "0", "1"),
        _row(2, "First line", "Rachel", "Neutral", "0", "0"),  # case is forgiven
        _row(3, "bad id", "Joey", "joy", "zero", "2"),
        _row(4, "bad label", "Joey", "happiness", "0", "3"),
        _row(5, "dup", "Ross", "anger", "0", "1"),
        ["6", "too few fields", "Monica"],
        _row(7, "too many", "Monica", "fear", "1", "0") + ["extra"],
        _row(8, "Only row of dialogue 2 has a bad label", "Phoebe", "boredom", "2", "0"),
        _row(9, "Dialogue three", "Phoebe", "surprise", "3", "0"),
    ]
    _write_meld_csv(tmp_path / "train_sent_emo.csv", rows)
    ds = load_meld(tmp_path, splits=["train"])
    dias = ds.splits["train"]
    assert [d.did for d in dias] == ["dia0", "dia3"]
    assert [u.text for u in dias[0].utterances] == ["First line", "Second line"]
    assert [u.label for u in dias[0].utterances] == [MELD_LABELS.index("neutral"), MELD_LABELS.index("joy")]
    # bad id, duplicate, too few and too many fields; two unknown labels; dialogue 2 emptied
    assert ds.report.skipped == {"malformed_row": 4, "unknown_label": 2, "empty_dialogue": 1}
    report = ds.report.to_dict()
    assert report["skipped"]["empty_dialogue"] == 1
    assert any("happiness" in d["detail"] for d in report["details"] if d["kind"] == "unknown_label")


def test_meld_missing_columns_is_a_clear_error(tmp_path: Path) -> None:
    header = [c for c in CSV_COLUMNS if c != "Emotion"]
    _write_meld_csv(tmp_path / "dev_sent_emo.csv", [["1", "hi", "Ross", "neutral", "0", "0"]], header)
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['Emotion'\].*expected columns"):
        load_meld(tmp_path, splits=["dev"])


def test_meld_whole_input_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_sent_emo.csv"):
        load_meld(tmp_path, splits=["train"])
    with pytest.raises(ValueError, match="unknown MELD split"):
        load_meld(tmp_path, splits=["validation"])
    _write_meld_csv(tmp_path / "test_sent_emo.csv", [_row(1, "x", "A", "sarcasm", "0", "0")])
    with pytest.raises(ValueError, match="no usable rows"):
        load_meld(tmp_path, splits=["test"])
    _write_meld_csv(tmp_path / "test_sent_emo.csv", [_row(1, "x", "A", "joy", "0", "0")])
    (tmp_path / "clips").mkdir()
    with pytest.raises(FileNotFoundError, match="output_repeated_splits_test"):
        load_meld(tmp_path, clips_root=tmp_path / "clips", splits=["test"])


def test_meld_clip_folder_one_level_down(tmp_path: Path) -> None:
    _write_meld_csv(tmp_path / "dev_sent_emo.csv", [_row(1, "x", "A", "joy", "0", "0")])
    (tmp_path / "MELD.Raw" / "dev" / "dev_splits_complete").mkdir(parents=True)
    ds = load_meld(tmp_path, clips_root=tmp_path / "MELD.Raw" / "dev", splits=["dev"])
    assert ds.report.skipped == {"missing_clip": 1}
    u = next(ds.utterances("dev"))
    assert u.text == "x" and u.audio is None and u.video is None


# --- IEMOCAP ----------------------------------------------------------------------------


def _tiny_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(1600, np.int16).tobytes())


def _iemocap_fixture(root: Path, with_split: bool = False) -> Path:
    """5 dialogues in each of sessions 1-4 and 2 in session 5, plus a few bad rows."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    (root / "avi").mkdir(exist_ok=True)
    labels = ["hap", "sad", "neutral", "ang", "exc", "frustrated"]
    header = ["dialogue_id", "utterance_id", "session", "speaker", "text", "label",
              "wav_path", "avi_path", "start", "end"] + (["split"] if with_split else [])
    rows = []
    k = 0
    for session in range(1, 6):
        for d in range(5 if session < 5 else 2):
            did = f"Ses0{session}F_impro0{d}"
            if did != "Ses03F_impro04":  # its .avi is missing
                (root / "avi" / f"{did}.avi").write_bytes(b"")
            # written in reverse time order: the loader must sort by start
            for i in reversed(range(3)):
                uid = f"{did}_F00{i}"
                wav = f"wav/{uid}.wav"
                _tiny_wav(root / wav)
                row = [did, uid, str(session), "F" if i % 2 else "M", f"sentence {i}", labels[k % 6],
                       wav, f"avi/{did}.avi", f"{2.0 * i:.2f}", f"{2.0 * i + 1.5:.2f}"]
                if with_split:
                    row.append("dev" if did == "Ses01F_impro00" else "")
                rows.append(row)
                k += 1
    extra = [
        ["Ses01F_impro00", "Ses01F_impro00_X", "1", "M", "excluded", "xxx", "", "", "", ""],
        ["Ses01F_impro00", "Ses01F_impro00_Y", "1", "M", "unknown", "bored", "", "", "", ""],
        ["Ses01F_impro00", "Ses01F_impro00_Z", "seven", "M", "bad session", "sad", "", "", "", ""],
        ["Ses01F_impro00", "Ses01F_impro00_W", "1", "M", "missing wav", "sad", "wav/none.wav", "", "", ""],
        ["Ses02F_empty", "Ses02F_empty_A", "2", "M", "only excluded", "oth", "", "", "", ""],
    ]
    rows += [r + ([""] if with_split else []) for r in extra]
    path = root / "iemocap.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_iemocap_layout_and_standard_split(tmp_path: Path) -> None:
    ds = load_iemocap(_iemocap_fixture(tmp_path))
    assert ds.labels == IEMOCAP_LABELS
    session = {d.did: int(d.did[4]) for s in ds.splits for d in ds.splits[s]}
    test = {d.did for d in ds.splits["test"]}
    dev = [d.did for d in ds.splits["dev"]]
    assert test == {did for did, s in session.items() if s == 5}
    assert len(dev) == 12 and all(session[d] in (1, 2, 3, 4) for d in dev)
    assert sorted(session[d] for d in dev) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert len(ds.splits["train"]) == 20 - 12
    assert not test & set(dev) and not {d.did for d in ds.splits["train"]} & (test | set(dev))
    dialogue = ds.splits["test"][0]
    assert [u.video.start for u in dialogue.utterances] == [0.0, 2.0, 4.0]  # sorted by start
    assert [u.text for u in dialogue.utterances] == ["sentence 0", "sentence 1", "sentence 2"]
    u = dialogue.utterances[0]
    assert u.uid.startswith("iemocap/test/") and u.audio is not None and Path(u.audio.path).is_file()
    assert u.video.end == 1.5
    assert ds.report.skipped["excluded_label"] == 2
    assert ds.report.skipped["unknown_label"] == 1
    assert ds.report.skipped["malformed_row"] == 1
    assert ds.report.skipped["empty_dialogue"] == 1  # Ses02F_empty
    # the missing .avi (3 sentences) and the missing wav are counted; the sentences are kept
    assert ds.report.skipped["missing_clip"] == 4
    no_video = [u for s in ds.splits for u in ds.utterances(s) if "Ses03F_impro04" in u.uid]
    assert len(no_video) == 3 and all(u.video is None and u.audio is not None for u in no_video)
    kept = [u for s in ds.splits for u in ds.utterances(s) if u.uid.endswith("_W")]
    assert len(kept) == 1 and kept[0].audio is None and kept[0].label == IEMOCAP_LABELS.index("sad")
    # the same seed gives the same dev set; another seed another one
    assert [d.did for d in load_iemocap(tmp_path / "iemocap.csv").splits["dev"]] == dev
    assert [d.did for d in load_iemocap(tmp_path / "iemocap.csv", seed=1).splits["dev"]] != dev


def test_iemocap_split_column_overrides(tmp_path: Path) -> None:
    ds = load_iemocap(_iemocap_fixture(tmp_path, with_split=True), check_media=False)
    assert "Ses01F_impro00" in {d.did for d in ds.splits["dev"]}
    assert {d.did for d in ds.splits["test"]} == {"Ses05F_impro00", "Ses05F_impro01"}
    assert "missing_clip" not in ds.report.skipped
    u = ds.splits["test"][0].utterances[0]
    assert u.video.path == str(tmp_path / "avi" / "Ses05F_impro00.avi")  # relative to the CSV's folder


def test_iemocap_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("dialogue_id,utterance_id,speaker,text\nA,A_1,M,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['session', 'label'\]"):
        load_iemocap(path)


# --- RAVDESS ----------------------------------------------------------------------------


def test_ravdess_speech_fixture_names_and_labels(tmp_path: Path) -> None:
    for name in ["03-01-02-01-01-01-01", "03-01-03-02-02-01-02", "03-01-08-01-01-02-18",
                 "03-01-05-01-01-01-23", "03-01-09-01-01-01-03", "not-a-ravdess-name"]:
        (tmp_path / f"{name}.flac").write_bytes(b"")
    ds = load_ravdess_speech(tmp_path, with_text=True)
    train = {u.uid.rsplit("/", 1)[1]: u for u in ds.utterances("train")}
    assert set(train) == {"03-01-02-01-01-01-01", "03-01-03-02-02-01-02"}
    assert train["03-01-02-01-01-01-01"].label == MELD_LABELS.index("neutral")  # calm -> neutral
    assert train["03-01-03-02-02-01-02"].label == MELD_LABELS.index("joy")
    assert train["03-01-03-02-02-01-02"].text == "Dogs are sitting by the door"
    assert train["03-01-02-01-01-01-01"].speaker == "actor01"
    (dev,) = list(ds.utterances("dev"))
    assert dev.label == MELD_LABELS.index("surprise") and dev.text == "Kids are talking by the door"
    assert ds.report.skipped == {"held_out": 1, "unknown_label": 1, "malformed_row": 1}
    assert load_ravdess_speech(tmp_path).splits["dev"][0].utterances[0].text == ""
    eight = load_ravdess_speech(tmp_path, label_space="ravdess")
    assert eight.labels == RAVDESS_LABELS
    assert next(eight.utterances("train")).label == RAVDESS_LABELS.index("calm")
    with pytest.raises(ValueError, match="actor 17 is in both"):
        load_ravdess_speech(tmp_path, train_actors=range(1, 18))
    with pytest.raises(ValueError, match="label_space"):
        load_ravdess_speech(tmp_path, label_space="fer")


def test_real_ravdess_speech_actor_split(data: Path) -> None:
    ds = load_ravdess_speech(data / "ravdess")
    assert ds.num_utterances("train") == 960 and ds.num_utterances("dev") == 240
    actors = {s: {u.speaker for u in ds.utterances(s)} for s in ds.splits}
    assert not actors["train"] & actors["dev"]
    assert actors["dev"] == {f"actor{a}" for a in range(17, 21)}
    counts = ds.label_counts("train")
    assert counts["neutral"] == 192 and counts["joy"] == 128  # neutral + calm fold together
    assert all(Path(u.audio.path).suffix == ".flac" for u in ds.utterances("dev"))


def test_real_ravdess_paired_split(data: Path) -> None:
    ds = load_ravdess_paired(data / "ravdess" / "ravdess_au_mfcc_actors01-20.npz",
                             train_actors=range(1, 15), dev_actors=range(15, 18), test_actors=range(18, 21),
                             speech_root=data / "ravdess")
    actors = {s: {u.speaker for u in ds.utterances(s)} for s in ds.splits}
    assert actors["test"] == {"actor18", "actor19", "actor20"}
    assert not (actors["train"] & actors["dev"]) and not (actors["dev"] & actors["test"])
    assert sum(ds.num_utterances(s) for s in ds.splits) == 1200
    u = next(ds.utterances("dev"))
    assert u.arrays["au"].shape == (35,) and u.arrays["mfcc"].shape == (259,)
    assert Path(u.audio.path).name == "03-" + u.uid.rsplit("/", 1)[1].split("-", 1)[1] + ".flac"
    assert not ds.report.skipped


def test_ravdess_paired_bad_rows(tmp_path: Path) -> None:
    ids = np.array(["01-01-05-01-01-01-01", "01-01-03-01-01-01-18", "bogus", "01-01-04-01-01-01-02"])
    feats = np.zeros((4, 294), np.float32)
    feats[3, 7] = np.nan
    np.savez(tmp_path / "p.npz", clip_ids=ids, features=feats)
    ds = load_ravdess_paired(tmp_path / "p.npz")
    assert [u.label for u in ds.utterances("train")] == [MELD_LABELS.index("anger")]
    assert [u.label for u in ds.utterances("dev")] == [MELD_LABELS.index("joy")]
    assert ds.report.skipped == {"malformed_row": 2}
    np.savez(tmp_path / "q.npz", ids=ids, features=feats)
    with pytest.raises(ValueError, match=r"missing array\(s\) \['clip_ids'\]"):
        load_ravdess_paired(tmp_path / "q.npz")


# --- FER2013 ----------------------------------------------------------------------------


def test_real_fer2013_counts_fast(data: Path) -> None:
    t0 = time.perf_counter()
    ds = load_fer2013(data / "fer2013")
    elapsed = time.perf_counter() - t0
    assert ds.num_utterances("train") == 25117 and ds.num_utterances("dev") == 5383
    assert elapsed < 10.0, f"FER2013 took {elapsed:.1f} s to load"
    u = ds.splits["dev"][0].utterances[0]
    assert u.arrays["face"].shape == (48, 48) and u.arrays["face"].dtype == np.uint8
    with np.load(data / "fer2013" / "fer2013_val.npz") as z:
        raw = z["labels"]
        names = [str(n) for n in z["label_names"]]
    happy = int(np.flatnonzero(raw == names.index("happy"))[0])
    assert ds.splits["dev"][happy].utterances[0].label == MELD_LABELS.index("joy")
    assert ds.label_counts("dev")["joy"] == int((raw == names.index("happy")).sum())


def test_fer2013_fixture_bad_labels_and_keys(tmp_path: Path) -> None:
    images = np.zeros((5, 48, 48), np.uint8)
    images[2] = 200
    np.savez(tmp_path / "a.npz", images=images, labels=np.array([0, 6, 3, 9, -1]))
    ds = load_fer2013(tmp_path, splits={"train": "a.npz"})
    assert [u.label for u in ds.utterances("train")] == [MELD_LABELS.index(x) for x in ("anger", "neutral", "joy")]
    assert int(ds.splits["train"][2].utterances[0].arrays["face"].mean()) == 200
    assert ds.report.skipped == {"unknown_label": 2}
    np.savez(tmp_path / "b.npz", pixels=images, labels=np.zeros(5))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['images'\]"):
        load_fer2013(tmp_path, splits={"train": "b.npz"})
    with pytest.raises(FileNotFoundError, match="c.npz"):
        load_fer2013(tmp_path, splits={"train": "c.npz"})
