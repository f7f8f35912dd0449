"""Lite video encoder: Haar-cascade face detection, then the mini-Xception face CNN per frame.

An utterance's frames are sampled uniformly (at most `num_frames`), the largest
face of each frame is cropped, and every face goes through the CNN. The
utterance vector concatenates the mean and the standard deviation over its
faces of [pooled penultimate features ; 7 expression logits], so
dim = 2 * (feature_dim + 7) = 270 with the shipped weights. The standard
deviation keeps how much the expression moved during the utterance, which a
mean alone loses. An utterance in which no frame shows a face is reported
absent (present=False, zero vector) so that MAGT masks it.

Frames that are 2-D uint8 arrays (or H x W x 1) are taken as ready face crops
and skip detection: this is how FER2013's 48 x 48 faces train the encoder.
Three-channel frames are full BGR camera frames and go through the detector.
A live stream may pass a FaceTracker with each frame: most frames are then
searched only near the face found before, at about a quarter of the cost.
OpenCV is imported only when a detector or a resize is first needed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from magtkd_stream.config import VideoEncoderConfig
from magtkd_stream.encoders.base import Encoder, EncoderOutput, VideoInput
from magtkd_stream.encoders.face_cnn import FACE_CNN_INPUT_SIZE, MiniXception, load_face_cnn
from magtkd_stream.resources import require, resolve_model

log = logging.getLogger(__name__)

CASCADE_FILE = "haarcascade_frontalface_default.xml"
PACKAGED_WEIGHTS_REFS = ("asset:face_cnn", "face_cnn")  # short forms of asset:face_cnn.safetensors
Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels
NEAR_GROW = 0.5  # a search near a face covers it grown by half its size on every side
NEAR_SIZES = (0.6, 1.6)  # ... for faces this many times its width
REDETECT_EVERY = 6  # a tracked stream searches its whole frame every 6th frame (2 s at stream.crop_fps 3)


def _cv2() -> Any:
    return require("cv2", "opencv-python>=4.8,<5", why="face detection and face crop resizing")


class HaarFaceDetector:
    """Frontal faces with OpenCV's bundled Haar cascade; frames are shrunk to `max_side` first for speed."""

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
        max_side: int = VideoEncoderConfig.detect_side,
        cascade_path: Optional[str | Path] = None,
    ) -> None:
        cv2 = _cv2()
        if cascade_path is None:
            base = getattr(getattr(cv2, "data", None), "haarcascades", None)
            if base is None:
                raise FileNotFoundError(
                    "this OpenCV build has no cv2.data.haarcascades (opencv-python 5.x dropped the cascades); "
                    "install opencv-python>=4.8,<5 or pass cascade_path=<haarcascade_frontalface_default.xml>"
                )
            cascade_path = Path(base) / CASCADE_FILE
        cascade_path = Path(cascade_path)
        if not cascade_path.is_file():
            raise FileNotFoundError(
                f"Haar cascade {cascade_path} is missing; install opencv-python>=4.8,<5 (it bundles {CASCADE_FILE}) "
                "or pass cascade_path to a copy of it"
            )
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError("this OpenCV build has no CascadeClassifier; install opencv-python>=4.8,<5")
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load the Haar cascade {cascade_path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side

    def detect(self, frame_bgr: np.ndarray, near: Optional[Box] = None) -> list[Box]:
        """Faces as (x, y, w, h) in the frame's pixels, largest first; [] when none.

        With `near`, a face found in an earlier frame of the same stream, only a
        window around it is searched, and only for faces of about its size, at the
        same scale as a whole-frame search: a face that stays put is found again
        for about a quarter of the cost.
        """
        cv2 = _cv2()
        gray = to_gray(frame_bgr)
        h, w = gray.shape
        scale = min(1.0, self.max_side / max(h, w))
        x0 = y0 = 0
        min_size, max_size = self.min_size, 0  # 0: no upper bound
        if near is not None:
            bx, by, bw, bh = near
            dx, dy = int(bw * NEAR_GROW), int(bh * NEAR_GROW)
            x0, y0, x1, y1 = max(0, bx - dx), max(0, by - dy), min(w, bx + bw + dx), min(h, by + bh + dy)
            if x1 - x0 < 2 or y1 - y0 < 2:
                return []
            gray = gray[y0:y1, x0:x1]
            min_size = max(self.min_size, int(bw * scale * NEAR_SIZES[0]))
            max_size = max(min_size, math.ceil(bw * scale * NEAR_SIZES[1]))
        if scale < 1:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        found = self._cascade.detectMultiScale(
            cv2.equalizeHist(gray),
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
            maxSize=(max_size, max_size),
        )
        boxes = [(x0 + int(round(bx / scale)), y0 + int(round(by / scale)), int(round(bw / scale)),
                  int(round(bh / scale))) for bx, by, bw, bh in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


@dataclass
class FaceTracker:
    """The face of one video stream, followed from frame to frame.

    Most frames are searched only near the face found before (HaarFaceDetector.detect
    with `near`). The whole frame is searched when that finds nothing, when no face
    is known yet, and every `redetect_every`-th frame, so a new or larger face
    is taken up within a few frames.
    """

    redetect_every: int = REDETECT_EVERY
    last: Optional[Box] = None
    since_whole: int = 0  # frames since the last whole-frame search

    def find(self, detector: Any, frame_bgr: np.ndarray) -> Optional[Box]:
        """The stream's face in this frame (the largest one after a whole-frame search), or None."""
        if self.last is not None and self.since_whole + 1 < self.redetect_every:
            boxes = detector.detect(frame_bgr, near=self.last)
            if boxes:
                self.last, self.since_whole = boxes[0], self.since_whole + 1
                return self.last
        boxes = detector.detect(frame_bgr)
        self.last, self.since_whole = (boxes[0] if boxes else None), 0
        return self.last


def make_detector(kind: str, detect_side: int = VideoEncoderConfig.detect_side) -> Any:
    """A face detector by its config name (encoders.video.detector)."""
    if kind == "haar":
        return HaarFaceDetector(max_side=detect_side)
    if kind == "blazeface":
        from magtkd_stream.encoders.blazeface import BlazeFaceDetector

        return BlazeFaceDetector()
    raise ValueError(f"encoders.video.detector {kind!r}: accepted 'haar' or 'blazeface'")


def to_gray(frame: np.ndarray) -> np.ndarray:
    """uint8 grayscale from a BGR frame (H, W, 3), a gray crop (H, W) or (H, W, 1)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        got = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"video frames must be uint8 numpy arrays (BGR H x W x 3, or gray H x W), got {got}")
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 3:
        return _cv2().cvtColor(frame, _cv2().COLOR_BGR2GRAY)
    raise ValueError(f"video frames must be BGR H x W x 3 or gray H x W (x 1), got shape {frame.shape}")


def crop_face(gray: np.ndarray, box: Box, margin: float = 0.1) -> np.ndarray:
    """The box grown by `margin` of its size on every side, clipped to the frame."""
    x, y, w, h = box
    dx, dy = int(round(w * margin)), int(round(h * margin))
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(gray.shape[1], x + w + dx), min(gray.shape[0], y + h + dy)
    return gray[y0:y1, x0:x1]


def prepare_faces(crops: Sequence[np.ndarray], size: int = FACE_CNN_INPUT_SIZE) -> np.ndarray:
    """Gray uint8 crops -> float32 (N, 1, size, size) in [-1, 1], the CNN's input.

    Enlarging uses bilinear interpolation (how FER2013's 48 px faces were fed to
    the original model); shrinking uses area averaging to avoid aliasing.
    """
    cv2 = _cv2()
    out = np.empty((len(crops), 1, size, size), dtype=np.float32)
    for i, crop in enumerate(crops):
        gray = to_gray(crop)
        if gray.shape[0] < 2 or gray.shape[1] < 2:
            raise ValueError(f"face crop {i} is too small ({gray.shape}); need at least 2 x 2 pixels")
        if gray.shape != (size, size):
            shrink = min(gray.shape) > size
            gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i, 0] = gray.astype(np.float32) / 255.0 * 2.0 - 1.0
    return out


def sample_indices(num_frames: int, limit: int) -> list[int]:
    """At most `limit` frame indices spread uniformly over [0, num_frames), first and last included."""
    if num_frames <= limit:
        return list(range(num_frames))
    return sorted(set(np.linspace(0, num_frames - 1, limit).round().astype(int).tolist()))


def build_face_cnn(cfg: VideoEncoderConfig) -> MiniXception:
    """The CNN a config names: random weights (cfg.random_init), the packaged weights, or a file."""
    if cfg.random_init is not None:
        return MiniXception(**cfg.random_init)
    if cfg.model in PACKAGED_WEIGHTS_REFS:
        return load_face_cnn()
    path = Path(resolve_model(cfg.model)).expanduser()
    if path.suffix == ".safetensors" and path.is_file():
        return load_face_cnn(path)
    raise ValueError(
        f"encoders.video.model {cfg.model!r} is not usable with kind 'face_cnn'; accepted: "
        "'asset:face_cnn.safetensors' (the packaged weights), a path to a .safetensors file written by "
        "training.studies.convert_face_cnn, or random_init: {} for random weights"
    )


class FaceCNNEncoder(Encoder):
    """Video encoder of the lite profile: dim = 2 * (feature_dim + num_classes), mean ; std over faces."""

    modality = "video"

    def __init__(
        self, cfg: VideoEncoderConfig, detector: Optional[Any] = None, margin: float = 0.1
    ) -> None:
        super().__init__()
        if cfg.kind != "face_cnn":
            raise ValueError(f"FaceCNNEncoder needs encoders.video.kind 'face_cnn', got {cfg.kind!r}")
        if cfg.image_mean is not None or cfg.image_std is not None:
            log.warning("encoders.video.image_mean/std are ignored by the face CNN (gray input scaled to [-1, 1])")
        self.cnn = build_face_cnn(cfg)
        self.image_size = cfg.image_size or FACE_CNN_INPUT_SIZE
        self.num_frames = cfg.num_frames
        self.margin = margin
        self.detect_side = cfg.detect_side
        self.detector_kind = cfg.detector
        self.per_face_dim = self.cnn.feature_dim + self.cnn.num_classes
        self.dim = 2 * self.per_face_dim
        self._detector = detector
        self._trainable: list[nn.Module] = []
        self.set_trainable_layers(cfg.trainable_layers)

    @property
    def detector(self) -> Any:
        """The configured face detector (built on first use): HaarFaceDetector or BlazeFaceDetector."""
        if self._detector is None:
            self._detector = make_detector(self.detector_kind, self.detect_side)
        return self._detector

    def crop_frame(self, frame: np.ndarray, tracker: Optional[FaceTracker] = None) -> Optional[np.ndarray]:
        """Gray crop of the largest face (None when there is none); a 2-D frame is already a crop.

        A streaming caller may crop frames as they arrive and hand the crops over
        as 2-D frames at the utterance's end, so detection overlaps the speech;
        with its stream's `tracker`, most frames are searched only near the last face.
        """
        gray = to_gray(frame)
        if frame.ndim == 2 or frame.shape[2] == 1:
            return gray
        if tracker is not None:
            box = tracker.find(self.detector, frame)
        else:
            boxes = self.detector.detect(frame)
            box = boxes[0] if boxes else None
        return crop_face(gray, box, self.margin) if box is not None else None

    def face_crops(self, item: VideoInput) -> list[np.ndarray]:
        """Gray face crops of an utterance's sampled frames; frames without a face contribute none."""
        frames = list(item.frames)
        crops = (self.crop_frame(frames[i]) for i in sample_indices(len(frames), self.num_frames))
        return [c for c in crops if c is not None]

    def collate(self, items: Sequence[VideoInput]) -> dict[str, Any]:
        """{"faces": (N, 1, S, S) float in [-1, 1], "counts": (B,) faces per utterance}."""
        all_crops: list[np.ndarray] = []
        counts: list[int] = []
        for j, item in enumerate(items):
            if not isinstance(item, VideoInput):
                raise TypeError(f"FaceCNNEncoder.collate item {j}: expected VideoInput, got {type(item).__name__}")
            crops = self.face_crops(item)
            all_crops.extend(crops)
            counts.append(len(crops))
        size = self.image_size
        faces = prepare_faces(all_crops, size) if all_crops else np.zeros((0, 1, size, size), np.float32)
        return {"faces": torch.from_numpy(faces), "counts": torch.tensor(counts, dtype=torch.long)}

    def forward(self, faces: torch.Tensor, counts: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        batch = counts.shape[0]
        if int(counts.sum()) != faces.shape[0]:
            raise ValueError(f"counts sum to {int(counts.sum())} but {faces.shape[0]} faces were given")
        device = counts.device
        if faces.shape[0] == 0:
            zeros = torch.zeros(batch, self.dim, device=device)
            return EncoderOutput(vectors=zeros, present=torch.zeros(batch, dtype=torch.bool, device=device))
        feats, logits = self.cnn.forward_both(faces)
        per_face = torch.cat([feats, logits], dim=1)  # (N, feature_dim + num_classes)
        seg = torch.repeat_interleave(torch.arange(batch, device=device), counts)
        n = counts.clamp(min=1).to(per_face.dtype).unsqueeze(1)
        mean = per_face.new_zeros(batch, self.per_face_dim).index_add(0, seg, per_face) / n
        centred = per_face - mean[seg]
        var = per_face.new_zeros(batch, self.per_face_dim).index_add(0, seg, centred * centred) / n
        std = torch.sqrt(var + 1e-8)  # eps keeps the gradient finite for one-face utterances
        present = counts > 0
        vectors = torch.cat([mean, std], dim=1) * present.unsqueeze(1).to(per_face.dtype)
        return EncoderOutput(vectors=vectors, present=present)

    def set_trainable_layers(self, n: int) -> None:
        """0: frozen; -1: everything; n > 0: the top n of [stem, residual blocks..., classifier conv]."""
        stages = self.cnn.stages()
        if n < -1:
            raise ValueError(f"trainable_layers must be -1, 0 or a positive count (up to {len(stages)}), got {n}")
        self._trainable = stages if n == -1 else stages[len(stages) - min(n, len(stages)) :] if n > 0 else []
        for p in self.cnn.parameters():
            p.requires_grad = False
        for stage in self._trainable:
            for p in stage.parameters():
                p.requires_grad = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "FaceCNNEncoder":
        """Frozen stages stay in eval mode so their batch-norm statistics never drift."""
        super().train(mode)
        trainable = {id(m) for m in self._trainable}
        for stage in self.cnn.stages():
            if id(stage) not in trainable:
                stage.eval()
        return self
