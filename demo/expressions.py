"""Facial expressions drawn on the sample's portrait, so its faces show what its lines say.

The only redistributable face the sample uses is one photograph of a smiling
person (scikit-image's astronaut.png). A conversation in which every face smiles
shows a multimodal recognizer nothing about anger or fear, and no real
conversation looks like that. So each line's face is drawn from that photograph:

- the smile's teeth are painted over with closed lips (an open mouth is painted
  in for surprise), and the smile folds beside the mouth are softened;
- hand-placed landmarks (brows, eyelids, mouth corners, cheeks, chin) are moved
  by a thin-plate-spline warp, which bends the skin smoothly between them and
  leaves everything outside the face untouched.

Landmarks and the warped region are positions in the 512 x 512 astronaut
portrait and mean nothing on another image. "joy" is the photograph as published.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import cv2
import numpy as np

# (x, y) in the portrait; "l"/"r" are the image's left and right.
LANDMARKS: dict[str, tuple[float, float]] = {
    "lbi": (212, 90), "lbm": (201, 88), "lbo": (190, 93),  # left brow: inner, middle, outer
    "rbi": (236, 90), "rbm": (248, 88), "rbo": (259, 93),
    "leu": (203, 97), "reu": (246, 98),  # upper eyelids
    "lel": (203, 104), "rel": (246, 105),  # lower eyelids
    "ml": (203, 140), "mr": (244, 141),  # mouth corners
    "mu": (224, 138), "md": (224, 154),  # upper and lower lip, middle
    "chin": (224, 168),
    "lc": (197, 127), "rc": (251, 127),  # cheeks beside the smile folds
    "lj": (192, 152), "rj": (256, 152),  # jaw
}
REGION = (150, 40, 300, 200)  # x0, y0, x1, y1: the only pixels an expression changes
# Points that stay put: the region's rim, the nose, the temples and the forehead.
FIXED: tuple[tuple[float, float], ...] = (
    *((x, y) for x in range(155, 296, 20) for y in (45, 195)),
    *((x, y) for y in range(65, 176, 20) for x in (155, 295)),
    (224, 112), (224, 125), (180, 105), (268, 105), (224, 70), (190, 80), (258, 80),
)
TEETH = ((204, 140), (214, 141), (224, 141), (236, 140), (243, 141), (236, 148), (224, 150), (212, 148))
FOLDS = (((196, 122), (190, 135), (197, 150), (203, 150), (205, 138), (206, 124)),
         ((252, 122), (258, 135), (251, 150), (245, 150), (243, 138), (242, 124)))
LIP_SAMPLE = (slice(150, 154), slice(212, 236))  # rows, columns of the lower lip
SEAM_Y = 145
SEAM_COLOUR = (60, 50, 80)  # BGR
MOUTH_COLOUR = (45, 35, 70)  # BGR, inside of an open mouth


def sym(name: str, inward: float, down: float) -> dict[str, tuple[float, float]]:
    """The same move on both sides of the face: `inward` towards the centre line, `down` in image rows."""
    return {f"l{name}": (inward, down), f"r{name}": (-inward, down)}


def _merge(*moves: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for m in moves:
        out.update(m)
    return out


@dataclass(frozen=True)
class Expression:
    """How one emotion is drawn: landmark moves (pixels), lips and fold softening."""

    look: str  # what a viewer should see, for the sample's script
    moves: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    close_lips: bool = True
    soften: float = 1.3  # blend weight of the blurred smile folds (0 = as photographed)
    open_mouth: Optional[tuple[int, int, int]] = None  # (width, height, centre row) painted after the warp


# Values were set by eye and checked with the face CNN the service uses
# (`python demo/make_sample.py --check-only` prints its reading of every line).
EXPRESSIONS: dict[str, Expression] = {
    "joy": Expression("the photograph as published: a broad smile", close_lips=False, soften=0.0),
    "neutral": Expression("lips closed and level, cheeks relaxed", _merge(
        {"ml": (4.8, 7.2), "mr": (-4.8, 6)}, sym("c", 0, 4.8), sym("el", 0, 1.8))),
    "sadness": Expression("inner brows raised, mouth corners pulled down", _merge(
        {"ml": (2.4, 9.6), "mr": (-2.4, 9.6), "md": (0, 2.4)}, sym("c", 0, 3.6), sym("el", 0, 1.8),
        sym("bi", 1.2, -8.4), sym("bo", 0, 3.6))),
    "anger": Expression("brows lowered and drawn together, lids tightened, lips pressed", _merge(
        {"ml": (3, 6), "mr": (-3, 5)}, sym("c", 0, 3), sym("bi", 5, 8), sym("bm", 1, 4), sym("eu", 0, 1))),
    "surprise": Expression("brows raised, eyes wide, jaw dropped, mouth open", _merge(
        sym("bi", 0, -7), sym("bm", 0, -8), sym("bo", 0, -6), sym("eu", 0, -3), sym("el", 0, 2), sym("c", 0, 3),
        {"md": (0, 10), "chin": (0, 10), "ml": (4, 5), "mr": (-4, 4)}), open_mouth=(22, 16, 151)),
    "fear": Expression("brows raised and drawn together, eyes wide, mouth stretched", _merge(
        sym("bi", 1.4, -12.6), sym("bm", 0, -9.8), sym("bo", 0, 4.2), sym("eu", 0, -2.8), sym("el", 0, 2.8),
        sym("c", 0, 4.2), {"ml": (-4.2, 12.6), "mr": (4.2, 12.6), "md": (0, 2.8)})),
    "disgust": Expression("brows lowered, upper lip raised, lids narrowed", _merge(
        sym("bi", 3, 8), sym("bm", 1, 4), {"mu": (0, -4), "ml": (1, 6), "mr": (-1, 6), "md": (0, 3)},
        sym("c", 0, 2), sym("el", 0, -1)), soften=1.6),
}


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    """Thin-plate radial basis U = r^2 log r, written with r^2 (U(0) = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, 0.5 * r2 * np.log(r2), 0.0)


def thin_plate_spline(centres: np.ndarray, values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Values at `points` of the 2-D thin-plate spline through (centres -> values).

    centres (n, 2), values (n, k), points (m, 2) -> (m, k). The spline passes
    exactly through every centre and bends as little as possible between them.
    """
    n = len(centres)
    d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    affine = np.hstack([np.ones((n, 1)), centres])
    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n:], system[n:, :n] = _tps_kernel(d2), affine, affine.T
    rhs = np.vstack([values, np.zeros((3, values.shape[1]))])
    coef = np.linalg.solve(system, rhs)
    p2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return _tps_kernel(p2) @ coef[:n] + np.hstack([np.ones((len(points), 1)), points]) @ coef[n:]


def warp(image: np.ndarray, moves: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """`image` with each named landmark moved by (dx, dy); other landmarks and FIXED points stay."""
    unknown = sorted(set(moves) - set(LANDMARKS))
    if unknown:
        raise ValueError(f"unknown landmarks {unknown}; known: {sorted(LANDMARKS)}")
    if not moves:
        return image.copy()
    dst, back = [], []
    for name, (x, y) in LANDMARKS.items():
        dx, dy = moves.get(name, (0.0, 0.0))
        dst.append((x + dx, y + dy))
        back.append((-dx, -dy))  # where each output pixel comes from
    dst.extend(FIXED)
    back.extend((0.0, 0.0) for _ in FIXED)
    x0, y0, x1, y1 = REGION
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
    shift = thin_plate_spline(np.asarray(dst, float), np.asarray(back, float), grid).reshape(y1 - y0, x1 - x0, 2)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, (xx + shift[..., 0]).astype(np.float32),
                                  (yy + shift[..., 1]).astype(np.float32), cv2.INTER_LINEAR)
    return out


def _blend(image: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.float32)[..., None]
    return np.clip(image.astype(np.float32) * (1 - m) + other.astype(np.float32) * m, 0, 255).astype(np.uint8)


def _polygon_mask(shape: tuple[int, ...], polygons: tuple[tuple[tuple[int, int], ...], ...], blur: float) -> np.ndarray:
    mask = np.zeros(shape[:2], np.float32)
    for poly in polygons:
        cv2.fillPoly(mask, [np.array(poly, np.int32)], 1.0)
    return cv2.GaussianBlur(mask, (0, 0), blur)


def close_lips(image: np.ndarray) -> np.ndarray:
    """The smile's teeth painted over in the colour of the lower lip, with a level seam between the lips."""
    lip = np.median(image[LIP_SAMPLE].reshape(-1, 3), axis=0)
    out = _blend(image, np.broadcast_to(lip, image.shape), _polygon_mask(image.shape, (TEETH,), 1.5))
    seam = np.array([(204, SEAM_Y), (214, SEAM_Y), (224, SEAM_Y), (234, SEAM_Y), (243, SEAM_Y)], np.int32)
    cv2.polylines(out, [seam], False, SEAM_COLOUR, 1, cv2.LINE_AA)
    return out


def soften_folds(image: np.ndarray, weight: float) -> np.ndarray:
    """The smile folds beside the mouth blended toward a blurred copy.

    weight 0 leaves them; 1 replaces them by the blurred copy; above 1 goes past
    it, flattening the folds' shading more than the blur alone does.
    """
    if weight <= 0:
        return image.copy()
    blurred = cv2.GaussianBlur(image, (0, 0), 6)
    return _blend(image, blurred, _polygon_mask(image.shape, FOLDS, 3.0) * weight)


def paint_open_mouth(image: np.ndarray, width: int, height: int, centre_row: int) -> np.ndarray:
    """A dark oval for the inside of an open mouth, centred under the nose."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.ellipse(mask, (int(LANDMARKS["mu"][0]), centre_row), (width // 2, height // 2), 0, 0, 360, 255, -1)
    return _blend(image, np.broadcast_to(np.array(MOUTH_COLOUR, np.uint8), image.shape),
                  cv2.GaussianBlur(mask, (5, 5), 1.2).astype(np.float32) / 255.0)


def express(portrait: np.ndarray, emotion: str) -> np.ndarray:
    """The 512 x 512 BGR portrait showing `emotion` (a MELD label); "joy" returns an unchanged copy."""
    if emotion not in EXPRESSIONS:
        raise ValueError(f"no expression for {emotion!r}; drawn: {', '.join(EXPRESSIONS)}")
    if portrait.shape != (512, 512, 3) or portrait.dtype != np.uint8:
        raise ValueError(f"expressions are placed on the 512x512 BGR uint8 astronaut portrait, got "
                         f"{portrait.shape} {portrait.dtype}")
    e = EXPRESSIONS[emotion]
    out = close_lips(portrait) if e.close_lips else portrait.copy()
    out = warp(soften_folds(out, e.soften), e.moves)
    if e.open_mouth is not None:
        out = paint_open_mouth(out, *e.open_mouth)
    return out
