"""BlazeFace on LiteRT: anchors, suppression, real photographs, and the detector choice in the config."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from magtkd_stream.config import ConfigError, VideoEncoderConfig
from magtkd_stream.encoders import blazeface
from magtkd_stream.encoders.face import FaceCNNEncoder, HaarFaceDetector, make_detector
from shared_data import data_dir

needs_blazeface = pytest.mark.skipif(not blazeface.available(),
                                     reason="BlazeFace weights or LiteRT not installed (make setup installs both)")


def test_anchor_layout_matches_the_model_outputs() -> None:
    a = blazeface.anchors(blazeface.MODELS["short"][2])
    assert a.shape == (896, 2)
    assert np.allclose(a[0], [1 / 32, 1 / 32]) and np.allclose(a[1], a[0])  # two anchors per 16x16 cell
    assert np.allclose(a[512], [1 / 16, 1 / 16]) and np.allclose(a[512:518], a[512])  # six per 8x8 cell
    assert (a > 0).all() and (a < 1).all()


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert blazeface.nms(boxes, np.array([0.6, 0.9, 0.7])) == [1, 2]


def test_detector_is_chosen_by_config_and_bad_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="encoders.video.detector"):
        VideoEncoderConfig(kind="face_cnn", detector="yolo")
    assert isinstance(make_detector("haar"), HaarFaceDetector)
    with pytest.raises(ValueError, match="accepted 'haar' or 'blazeface'"):
        make_detector("yolo")


@needs_blazeface
def test_blank_frame_has_no_face_and_a_gray_frame_is_refused() -> None:
    det = blazeface.BlazeFaceDetector()
    assert det.detect(np.zeros((240, 320, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="H x W x 3"):
        det.detect(np.zeros((48, 48), np.uint8))


def muxspace_photos(n: int) -> list[np.ndarray]:
    """The first n photographs of faces_muxspace (BGR), or a skip where the data is absent."""
    cv2 = pytest.importorskip("cv2")
    folder = data_dir() / "faces_muxspace"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"faces_muxspace not found at {folder}")
    with open(folder / "labels.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [cv2.imread(str(folder / "images" / r["image"])) for r in rows]


@needs_blazeface
def test_faces_in_photographs_are_found_and_framed_like_haar() -> None:
    photos = muxspace_photos(40)
    det, haar = blazeface.BlazeFaceDetector(), HaarFaceDetector()
    found = ratios = 0
    widths = []
    for img in photos:
        b = det.detect(img)
        found += bool(b)
        h = haar.detect(img)
        if b and h:
            ratios += 1
            widths.append(h[0][2] / b[0][2])
        if b:  # a box inside the frame, about face-sized for these portrait crops
            x, y, w, hh = b[0]
            assert 0 <= x and 0 <= y and x + w <= img.shape[1] and y + hh <= img.shape[0]
            assert w >= 0.2 * max(img.shape[:2])
    assert found >= 0.95 * len(photos)
    assert ratios >= 10 and 0.85 < float(np.median(widths)) < 1.15  # Haar's framing, so crops look as trained


@needs_blazeface
def test_encoder_crops_a_photo_with_blazeface() -> None:
    cv2 = pytest.importorskip("cv2")
    (img,) = muxspace_photos(1)
    canvas = np.zeros((480, 640, 3), np.uint8)  # a small face on a large frame, as a webcam shows it
    small = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2))
    canvas[100:100 + small.shape[0], 300:300 + small.shape[1]] = small
    enc = FaceCNNEncoder(VideoEncoderConfig(kind="face_cnn", model="asset:face_cnn", detector="blazeface"))
    crop = enc.crop_frame(canvas)
    assert crop is not None and crop.ndim == 2 and min(crop.shape) >= 24
