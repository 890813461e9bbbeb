"""A face as detectors give it, and the crop an aligned training image would be of it.

FER models are trained on aligned face crops: RAF-DB's 100 x 100 crops are filled by the face from the brows to the
chin, eyes level, at the same place in every crop. Where a detector gives landmarks, :func:`aligned_crop` rotates and
scales the face so that its eyes and mouth land where RAF-DB puts them (:class:`LandmarkTemplate`); where it gives a
box only, it crops the square an aligned crop would cover around that box (:class:`FaceAlignment`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from nla.errors import DataError

Box = tuple[int, int, int, int]  # x, y, width, height in pixels
Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One detected face: its box, the detector's confidence and, where the detector gives them, the centres of the
    eyes (the one on the image's left first) and of the mouth, in the image's pixels."""

    box: Box
    score: float = 1.0
    eyes: Optional[tuple[Point, Point]] = None
    mouth: Optional[Point] = None

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def scaled(self, factor: float) -> Face:
        """The same face in an image ``factor`` times the size of the one it was found in."""
        x, y, w, h = self.box
        box = (round(x * factor), round(y * factor), round(w * factor), round(h * factor))
        eyes = None if self.eyes is None else tuple((px * factor, py * factor) for px, py in self.eyes)
        mouth = None if self.mouth is None else (self.mouth[0] * factor, self.mouth[1] * factor)
        return Face(box, self.score, eyes, mouth)  # type: ignore[arg-type]

    def landmarks(self) -> list[float]:
        """The eyes and the mouth as six numbers (NaN where not known)."""
        if self.eyes is None or self.mouth is None:
            return [math.nan] * 6
        (lx, ly), (rx, ry) = self.eyes
        return [lx, ly, rx, ry, *self.mouth]


@dataclass(frozen=True)
class FaceAlignment:
    """Where an aligned training crop sits relative to the box a detector draws around its face: the crop's side is
    ``scale`` times the box's width, and its centre is ``shift_x``, ``shift_y`` box widths from the box's. Each
    detector has its own, measured on RAF-DB's aligned crops (``benchmarks/face_detection.py``)."""

    scale: float = 0.929
    shift_x: float = 0.015
    shift_y: float = 0.033

    def crop_box(self, face: Box) -> Box:
        x, y, w, h = face
        side = self.scale * w
        cx, cy = x + w / 2 + self.shift_x * w, y + h / 2 + self.shift_y * w
        return round(cx - side / 2), round(cy - side / 2), round(side), round(side)


@dataclass(frozen=True)
class LandmarkTemplate:
    """Where RAF-DB's aligned crops put the eyes and the mouth, as shares of the crop's side (x, y), as a detector's
    landmarks mark them (measured on 1000 RAF-DB test crops)."""

    left_eye: Point = (0.27, 0.33)
    right_eye: Point = (0.72, 0.33)
    mouth: Point = (0.49, 0.74)


def aligned_crop(
    image: np.ndarray,
    face: Face,
    size: int,
    alignment: FaceAlignment = FaceAlignment(),
    template: Optional[LandmarkTemplate] = None,
) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``face`` an aligned training image would be: eyes level and in RAF-DB's place
    where the face has landmarks and a ``template`` is given, else the square :class:`FaceAlignment` places around its
    box. The edge pixels repeat where the crop reaches past the image."""
    if template is not None and face.eyes is not None and face.mouth is not None:
        source = np.asarray([*face.eyes, face.mouth], dtype=np.float32)
        target = np.asarray([template.left_eye, template.right_eye, template.mouth], dtype=np.float32) * size
        matrix = similarity(source, target)
        if matrix is not None:
            return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop = crop_to_box(image, alignment.crop_box(face.box))
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR)


def similarity(source: np.ndarray, target: np.ndarray) -> Optional[np.ndarray]:
    """The rotation that levels the eyes (the first two ``source`` points, as the first two ``target`` points are),
    then the uniform scale and shift that best map all the ``source`` points onto the ``target`` ones (least
    squares), as a 2 x 3 matrix; ``None`` for eyes in one place."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    (sx, sy), (tx, ty) = source[1] - source[0], target[1] - target[0]
    if math.hypot(sx, sy) < 1e-6:
        return None
    angle = math.atan2(ty, tx) - math.atan2(sy, sx)
    rotation = np.asarray([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rotated = (source - source.mean(0)) @ rotation.T
    centred = target - target.mean(0)
    scale = float((rotated * centred).sum() / (rotated**2).sum())
    shift = target.mean(0) - scale * rotation @ source.mean(0)
    return np.hstack([scale * rotation, shift[:, None]]).astype(np.float32)


def crop_to_box(image: np.ndarray, box: Sequence[float], path: str = "image") -> np.ndarray:
    """The ``(x, y, w, h)`` region of ``image``; where it reaches past the image's edges, the edge pixels repeat."""
    x, y, w, h = (round(float(v)) for v in box)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, image.shape[1]), min(y + h, image.shape[0])
    if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
        shown = "(" + ", ".join(f"{float(v):g}" for v in box) + ")"
        if w <= 0 or h <= 0:
            raise DataError(f"face box {shown} of {path!r} is empty: (x, y, width, height) needs a width and height")
        raise DataError(f"face box {shown} lies outside image {path!r} of size {image.shape[1]}x{image.shape[0]}")
    crop = cv2.copyMakeBorder(image[y0:y1, x0:x1], y0 - y, y + h - y1, x0 - x, x + w - x1, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(crop)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    width, height = min(ax1, bx1) - max(a[0], b[0]), min(ay1, by1) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
