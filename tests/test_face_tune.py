"""Face-CNN fine-tuning: identity-split photo sets, augmentation, epoch selection on dev, and the file the service loads."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from magtkd_stream.config import load_config
from magtkd_stream.encoders.face import build_face_cnn
from magtkd_stream.encoders.face_cnn import FACE_CNN_LABELS, MiniXception, load_face_cnn
from shared_data import data_dir
from training.devset.compose import identity_split
from training.stage1.face_tune import FaceSet, TuneSettings, augment, fine_tune, muxspace_faces, save_tuned


def _bars(n: int, seed: int) -> FaceSet:
    """Class 0 (angry): a bright top half; class 3 (happy): a bright bottom half; noise on both."""
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(n) % 2 == 0, 0, 3).astype(np.int64)
    img = rng.integers(0, 60, (n, 64, 64)).astype(np.uint8)
    for i, y in enumerate(labels):
        rows = slice(0, 32) if y == 0 else slice(32, 64)
        img[i, rows] = np.clip(img[i, rows].astype(int) + 180, 0, 255)
    return FaceSet(img, labels, "muxspace-train" if seed == 0 else f"set-{seed}")


def test_augment_is_seeded_keeps_shape_and_range_and_changes_images() -> None:
    x = torch.rand(8, 1, 64, 64) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)


def test_fine_tune_learns_and_keeps_the_best_dev_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MiniXception(stem_width=4, block_widths=(8, 16))
    dev = _bars(40, 1)
    dev.name = "muxspace-dev"
    tuned, summary = fine_tune(model, [_bars(96, 0)], dev, [_bars(20, 2)],
                               TuneSettings(epochs=8, lr=3e-3, batch_size=16, muxspace_repeat=1))
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(9)) and "set-2" in history[0]
    best = max(h["muxspace-dev"]["macro_f1"] for h in history)
    assert history[summary["selected_epoch"]]["muxspace-dev"]["macro_f1"] == best
    assert best > history[0]["muxspace-dev"]["macro_f1"]
    with torch.no_grad():
        pred = tuned(torch.from_numpy(dev.images.astype(np.float32)[:, None] / 255 * 2 - 1)).argmax(1).numpy()
    assert (pred == dev.labels).mean() >= 0.9  # the two classes are easy: a model that learnt nothing fails this
    # the class weights favour the rarer class (only classes 0 and 3 are present; absent ones are clipped)
    weight = summary["class_weight"]
    assert len(weight) == len(FACE_CNN_LABELS) and weight[0] == pytest.approx(weight[3])


def test_saved_cnn_loads_in_the_service_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = MiniXception(stem_width=4, block_widths=(8, 16)).eval()
    path = tmp_path / "tuned.safetensors"
    save_tuned(model, path, {"selected_epoch": 2, "settings": {"epochs": 3}})
    loaded = load_face_cnn(path)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    cfg = load_config("lite", [f"encoders.video.model={path}"]).encoders.video
    assert build_face_cnn(cfg).arch == model.arch
    save_tuned(model, tmp_path / "again.safetensors", {"selected_epoch": 2, "settings": {"epochs": 3}})
    assert path.read_bytes() == (tmp_path / "again.safetensors").read_bytes()  # reproducible bytes


def test_shipped_lite_profile_uses_the_tuned_cnn() -> None:
    cfg = load_config("lite").encoders.video
    assert cfg.model == "asset:face_cnn_tuned.safetensors"
    assert build_face_cnn(cfg).num_classes == len(FACE_CNN_LABELS)


def test_muxspace_sets_keep_identities_apart_and_map_labels(tmp_path: Path) -> None:
    """Photos of train identities never reach the dev set (and back); contempt is dropped; happiness -> happy."""
    src = data_dir() / "faces_muxspace"
    if not (src / "labels.csv").is_file():
        pytest.skip(f"faces_muxspace not found at {src}")
    with open(src / "labels.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pick = {"train": [], "dev": []}
    for r in rows:
        split = identity_split(r["identity"])
        if r["emotion"] in ("happiness", "anger") and len(pick[split]) < 3:
            pick[split].append(r)
    contempt = next(r for r in rows if r["emotion"] == "contempt" and identity_split(r["identity"]) == "dev")
    folder = tmp_path / "faces_muxspace"
    (folder / "images").mkdir(parents=True)
    chosen = pick["train"] + pick["dev"] + [contempt]
    for r in chosen:
        shutil.copy(src / "images" / r["image"], folder / "images" / r["image"])
    with open(folder / "labels.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "emotion", "identity"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("image", "emotion", "identity")} for r in chosen)
    train, dropped_train = muxspace_faces(tmp_path, "train")
    dev, dropped_dev = muxspace_faces(tmp_path, "dev")
    assert dropped_dev["no_class"] == 1 and dropped_train["no_class"] == 0
    assert dropped_train["no_face"] == dropped_dev["no_face"] == 0  # these photos show a face the detector finds
    want = {"happiness": FACE_CNN_LABELS.index("happy"), "anger": FACE_CNN_LABELS.index("angry")}
    assert train.labels.tolist() == [want[r["emotion"]] for r in pick["train"]]
    assert dev.labels.tolist() == [want[r["emotion"]] for r in pick["dev"]]
    assert train.images.shape[1:] == (64, 64) and train.images.dtype == np.uint8
