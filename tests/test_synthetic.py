"""Synthetic MELD-layout generator and clip loading: generate -> load_meld -> load_audio/load_frames."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from magtkd_stream.labels import MELD_LABELS
from magtkd_stream.media import MediaError, MediaSpan, load_audio, load_frames
from training.data import load_meld, make_synthetic_meld
from training.data import synthetic
from training.data.meld import CLIP_FOLDERS, CSV_COLUMNS, CSV_NAMES

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("synthetic_meld")
    t0 = time.perf_counter()
    make_synthetic_meld(out, n_dialogues={"train": 3, "dev": 2, "test": 2}, utts_per_dialogue=(2, 3),
                        seed=3, defects=True)
    return out, time.perf_counter() - t0


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_layout_is_meld(generated: tuple[Path, float]) -> None:
    out, seconds = generated
    assert seconds < 30, f"generation took {seconds:.1f} s"
    manifest = json.loads((out / "synthetic.json").read_text(encoding="utf-8"))
    for split, name in CSV_NAMES.items():
        with open(out / name, encoding="utf-8", newline="") as f:
            assert next(csv.reader(f)) == list(CSV_COLUMNS)
        rows = _rows(out / name)
        assert len(rows) == manifest["counts"][split]["utterances"]
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d", r["StartTime"]) for r in rows)
        assert all(r["Emotion"] in MELD_LABELS for r in rows)
        clips = {p.name for p in (out / CLIP_FOLDERS[split]).glob("*.mp4")}
        wanted = {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in rows}
        missing = wanted - clips
        assert missing == ({Path(manifest["defects"]["missing"]).name} if split == "dev" else set())
    assert set(manifest["defects"]) == {"corrupt", "missing", "long"}


def test_round_trip_with_defects(generated: tuple[Path, float]) -> None:
    out, _ = generated
    manifest = json.loads((out / "synthetic.json").read_text(encoding="utf-8"))
    ds = load_meld(out, clips_root=out)
    assert ds.report.skipped == {"unreadable_clip": 1, "missing_clip": 1, "capped_clip": 1}
    for split in ds.splits:
        assert ds.num_utterances(split) == manifest["counts"][split]["utterances"]
    by_clip = {Path(u.uid).name: u for s in ds.splits for u in ds.utterances(s)}
    corrupt = by_clip[Path(manifest["defects"]["corrupt"]).stem]
    assert corrupt.text and corrupt.label is not None and corrupt.audio is None and corrupt.video is None
    assert by_clip[Path(manifest["defects"]["missing"]).stem].audio is None
    long = by_clip[Path(manifest["defects"]["long"]).stem]
    assert long.audio.end == 30.0 and long.video.end == 30.0
    with pytest.raises(MediaError, match="cannot open"):
        load_audio(MediaSpan(str(out / manifest["defects"]["corrupt"])))
    with pytest.raises(MediaError, match="not found"):
        load_frames(MediaSpan(str(out / manifest["defects"]["missing"])), num_frames=8)


def test_clips_carry_the_label(generated: tuple[Path, float]) -> None:
    out, _ = generated
    ds = load_meld(out, clips_root=out, splits=["train"])
    checked = 0
    for utt in ds.utterances("train"):
        if utt.audio is None:
            continue
        wav = load_audio(utt.audio)
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert 0.5 < len(wav) / 16000 < 6.0
        assert float(np.sqrt(np.mean(wav**2))) > 0.01 and np.abs(wav).max() <= 1.0
        frames = load_frames(utt.video, num_frames=8)
        assert len(frames) == 8 and all(f.shape == (96, 96, 3) and f.dtype == np.uint8 for f in frames)
        corner = np.mean([f[88:94, 2:8].reshape(-1, 3).mean(axis=0) for f in frames], axis=0)
        colour = synthetic.COLOURS[MELD_LABELS[utt.label]]  # BGR background of the emotion
        assert np.abs(corner - np.array(colour)).max() < 25, (utt.uid, corner, colour)
        checked += 1
    assert checked >= 5


def test_long_clip_is_decoded_within_its_span(generated: tuple[Path, float]) -> None:
    out, _ = generated
    path = str(out / json.loads((out / "synthetic.json").read_text())["defects"]["long"])
    wav = load_audio(MediaSpan(path, 20.0, 21.5))
    assert len(wav) == 24000 and np.abs(wav).max() < 0.01  # the padding after the speech is silent
    assert len(load_audio(MediaSpan(path, 0.0, 30.0))) == 30 * 16000
    assert len(load_frames(MediaSpan(path, 20.0, 21.5), fps=4)) == 6


def test_frames_are_sampled_uniformly_by_time(tmp_path: Path) -> None:
    values = np.arange(24) * 10  # frame i is uniformly grey 10*i, 12 fps -> 2 s
    frames = np.repeat(values.astype(np.uint8)[:, None, None, None], 96, 1).repeat(96, 2).repeat(3, 3)
    path = tmp_path / "ramp.mp4"
    synthetic._write_clip(path, frames, np.zeros(2 * synthetic.AUDIO_RATE, np.int16), "mpeg4")

    import av

    with av.open(str(path)) as container:  # grey level of each encoded frame, in order
        decoded = np.array([f.to_ndarray(format="bgr24").mean() for f in container.decode(video=0)])
    assert len(decoded) == 24

    def grey(span: MediaSpan, **kw) -> list[int]:
        """Index of the encoded frame each sampled frame is."""
        return [int(np.argmin(np.abs(decoded - f.mean()))) for f in load_frames(span, **kw)]

    assert grey(MediaSpan(str(path)), num_frames=4) == [3, 9, 15, 21]
    assert grey(MediaSpan(str(path), 1.0, 2.0), num_frames=2) == [15, 21]
    assert grey(MediaSpan(str(path)), fps=2) == [0, 6, 12, 18]
    short = tmp_path / "short.mp4"
    synthetic._write_clip(short, frames[5:7], np.zeros(4000, np.int16), "mpeg4")
    assert sorted(set(grey(MediaSpan(str(short)), num_frames=8))) == [5, 6]  # repeats, count met
    with pytest.raises(ValueError, match="exactly one"):
        load_frames(MediaSpan(str(path)), num_frames=4, fps=2)
    assert len(load_audio(MediaSpan(str(path), 0.5, 1.25))) == 12000
    with pytest.raises(MediaError, match="past its end"):
        load_audio(MediaSpan(str(path), 5.0, 6.0))
    repeated = load_frames(MediaSpan(str(short)), num_frames=8)
    repeated[0][:] = 0
    assert repeated[1].any()  # repeats are copies, not views of one array


def test_text_alone_predicts_the_label(tmp_path: Path) -> None:
    make_synthetic_meld(tmp_path, n_dialogues=8, seed=1, with_clips=False)
    ds = load_meld(tmp_path)
    assert not (tmp_path / "train_splits").exists()
    train, test = list(ds.utterances("train")), list(ds.utterances("test"))
    assert {u.label for u in train} == set(range(len(MELD_LABELS)))

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z’']+", text.lower()))

    # nearest train utterance by word overlap (Jaccard): a bag-of-words learner in miniature
    bags = [(words(u.text), u.label) for u in train]
    hits = 0
    for u in test:
        w = words(u.text)
        _, label = max(bags, key=lambda b: len(w & b[0]) / len(w | b[0]))
        hits += label == u.label
    assert hits / len(test) > 0.8


def test_same_seed_same_data_and_cli(tmp_path: Path) -> None:
    make_synthetic_meld(tmp_path / "a", seed=5, with_clips=False)
    assert synthetic.main([str(tmp_path / "b"), "--seed", "5", "--no-clips"]) == 0
    make_synthetic_meld(tmp_path / "c", seed=6, with_clips=False)
    a, b, c = ((tmp_path / x / "dev_sent_emo.csv").read_text(encoding="utf-8") for x in "abc")
    assert a == b and a != c


def test_bad_arguments_and_missing_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="utts_per_dialogue"):
        make_synthetic_meld(tmp_path, utts_per_dialogue=(3, 2), with_clips=False)
    with pytest.raises(ValueError, match="at least one dialogue"):
        make_synthetic_meld(tmp_path, n_dialogues={"train": 2, "dev": 0}, with_clips=False)
    monkeypatch.setattr(synthetic.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="espeak-ng is needed"):
        make_synthetic_meld(tmp_path / "x", n_dialogues=1)
