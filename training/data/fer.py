"""FER2013 face arrays as one-utterance dialogues with labels in the MELD set.

The .npz files hold images (N, 48, 48) uint8, labels (N,) and optionally
label_names (FER2013 order: angry, disgust, fear, happy, sad, surprise, neutral).
Each utterance's face is a view into the loaded array (no copy), so 30k faces
load in about a second.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from magtkd_stream.labels import FER2013_LABELS, FER2013_TO_MELD, MELD_LABELS, index_map

from .types import Dataset, Dialogue, LoadReport, Utterance

logger = logging.getLogger(__name__)

DEFAULT_FILES: dict[str, str] = {"train": "fer2013_train.npz", "dev": "fer2013_val.npz"}


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; expected images (N, 48, 48) uint8, "
                             f"labels (N,) and optionally label_names")
        images, labels = z["images"], z["labels"]
        names = [str(x) for x in z["label_names"]] if "label_names" in z.files else list(FER2013_LABELS)
    if images.ndim != 3 or images.dtype != np.uint8 or len(labels) != len(images) or labels.ndim != 1:
        raise ValueError(f"{path}: images {images.shape} {images.dtype} / labels {labels.shape}; "
                         f"expected images (N, H, W) uint8 and labels (N,)")
    return images, labels, names


def load_fer2013(root: str | Path, splits: Mapping[str, str] = DEFAULT_FILES) -> Dataset:
    """FER2013 splits (split name -> .npz file name under root) with arrays={"face": (48, 48) uint8}."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"FER2013 root {root} is not a folder; it should hold {sorted(splits.values())}")
    report = LoadReport("fer2013")
    out: dict[str, list[Dialogue]] = {}
    for split, file_name in splits.items():
        path = root / file_name
        if not path.is_file():
            raise FileNotFoundError(f"FER2013 split {split!r}: {path} not found")
        images, labels, names = _read(path)
        try:
            to_meld = np.asarray(index_map(names, FER2013_TO_MELD, MELD_LABELS), dtype=np.int64)
        except ValueError as exc:
            raise ValueError(f"{path}: label_names {names} do not map onto MELD: {exc}") from None
        valid = (labels >= 0) & (labels < len(names))
        for i in np.flatnonzero(~valid)[:100]:
            report.warn("unknown_label", f"{file_name} row {i}: label {labels[i]} not in 0..{len(names) - 1}")
        if (~valid).sum() > 100:
            report.note("unknown_label", int((~valid).sum()) - 100)
        mapped = to_meld[np.where(valid, labels, 0)].tolist()
        keep = np.flatnonzero(valid).tolist()
        prefix = f"fer2013/{split}/"
        dialogues = []
        for i in keep:
            utt = Utterance(prefix + str(i), "unknown", "", mapped[i], None, None, {"face": images[i]})
            dialogues.append(Dialogue(str(i), split, [utt], "fer2013"))
        out[split] = dialogues
        report.count(split, dialogues)
    logger.info("loaded fer2013 from %s: %s", root, report.summary())
    return Dataset(name="fer2013", labels=MELD_LABELS, splits=out, report=report)
