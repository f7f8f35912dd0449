"""How often each face detector finds the face a user shows: muxspace photos and the dev composition's frames.

Why: a face the detector misses is a modality the recogniser never sees. This
measures, per detector (Haar, BlazeFace), the share of muxspace photos of the
dev identities with a face found, and on a composed folder the share of
utterances showing a face whose middle frame yields one (and of those showing
none that yield one anyway: false alarms), with the time per detection. Where
both detectors fire on a photo it also measures how BlazeFace's box relates
to Haar's (width ratio, vertical offset): blazeface.HAAR_FRAMING comes from it.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from training.devset.compose import identity_split

log = logging.getLogger(__name__)

DETECTORS = ("haar", "blazeface")


def _detectors(kinds: Sequence[str]) -> dict[str, Any]:
    from magtkd_stream.encoders.face import make_detector

    return {k: make_detector(k) for k in kinds}


def _time_all(det: Any, frames: Sequence[np.ndarray]) -> tuple[list[list[tuple[int, int, int, int]]], float]:
    t0 = time.perf_counter()
    found = [det.detect(f) for f in frames]
    return found, 1e3 * (time.perf_counter() - t0) / max(1, len(frames))


def photo_hits(root: Path, split: str = "dev", limit: Optional[int] = None,
               kinds: Sequence[str] = DETECTORS) -> dict[str, Any]:
    """Per detector, the share of the split's muxspace photos with a face found; framing where all fire."""
    import cv2

    folder = Path(root) / "faces_muxspace"
    with open(folder / "labels.csv", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if identity_split(r["identity"]) == split]
    rows = rows[: limit or None]
    images = [cv2.imread(str(folder / "images" / r["image"])) for r in rows]
    images = [i for i in images if i is not None]
    out: dict[str, Any] = {"split": split, "photos": len(images)}
    boxes = {}
    for kind, det in _detectors(kinds).items():
        boxes[kind], ms = _time_all(det, images)
        out[kind] = {"hit_rate": round(float(np.mean([bool(b) for b in boxes[kind]])), 4), "ms_per_photo": round(ms, 2)}
    if {"haar", "blazeface"} <= set(boxes):
        pairs = [(h[0], b[0]) for h, b in zip(boxes["haar"], boxes["blazeface"]) if h and b]
        if pairs:
            out["framing_haar_vs_blazeface"] = {
                "photos": len(pairs),
                "width_ratio_median": round(float(np.median([h[2] / b[2] for h, b in pairs])), 4),
                "centre_dy_median": round(float(np.median([((h[1] + h[3] / 2) - (b[1] + b[3] / 2)) / b[3]
                                                           for h, b in pairs])), 4),
            }
    return out


def composition_hits(composed: Path, kinds: Sequence[str] = DETECTORS) -> dict[str, Any]:
    """Per detector, hits on the middle frame of utterances that show a face, and false alarms on the rest."""
    import cv2

    manifest = json.loads((composed / "manifest.json").read_text(encoding="utf-8"))
    frames, shown = [], []
    for c in manifest["conversations"]:
        script = json.loads((composed / c["script"]).read_text(encoding="utf-8"))
        cap = cv2.VideoCapture(str(composed / c["media"]))
        try:
            for u in script["utterances"]:
                cap.set(cv2.CAP_PROP_POS_MSEC, 500.0 * (float(u["start"]) + float(u["end"])))
                ok, frame = cap.read()
                if ok:
                    frames.append(frame)
                    shown.append(u.get("face") == "shown")
        finally:
            cap.release()
    out: dict[str, Any] = {"composed": str(composed), "utterances": len(frames), "face_shown": int(sum(shown))}
    for kind, det in _detectors(kinds).items():
        found, ms = _time_all(det, frames)
        hit = [bool(f) for f, s in zip(found, shown) if s]
        false = [bool(f) for f, s in zip(found, shown) if not s]
        out[kind] = {"hit_rate_when_shown": round(float(np.mean(hit)), 4) if hit else None,
                     "false_alarm_when_absent": round(float(np.mean(false)), 4) if false else None,
                     "ms_per_frame": round(ms, 2)}
    return out
