"""Finding the face in a photo, and cropping it the way the training images were aligned.

FER models are trained on aligned face crops: RAF-DB's 100 x 100 crops are filled by the face, from the brows to
the chin. A photo of a person (a JAFFE-style shot, a phone picture) has much else around the face; squashing the
whole photo to the model's input gives it something it never saw. ``--data.detect_faces true`` finds the largest
face with OpenCV's Haar cascades (they ship inside the opencv-python-headless 4.x wheel, so nothing is downloaded)
and crops the region an aligned crop would cover.

The cascade was chosen, and the crop's placement measured, on real RAF-DB test faces pasted into larger
backgrounds (``benchmarks/face_detection.py``, results in ``benchmarks/results/face-detection.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in pixels


@dataclass(frozen=True)
class FaceAlignment:
    """Where an aligned training crop sits relative to the box the detector draws around its face: the crop's side
    is ``scale`` times the box's width, and its centre is ``shift_x``, ``shift_y`` box widths from the box's.

    The default is measured on RAF-DB's aligned crops (``benchmarks/face_detection.py``): the detector's box is a
    little larger than the crop and centred slightly above it.
    """

    scale: float = 0.929
    shift_x: float = 0.015
    shift_y: float = 0.033

    def crop_box(self, face: Box) -> Box:
        x, y, w, h = face
        side = self.scale * w
        cx, cy = x + w / 2 + self.shift_x * w, y + h / 2 + self.shift_y * w
        return round(cx - side / 2), round(cy - side / 2), round(side), round(side)


#: The cascades tried in order: the frontal one chosen by the benchmark, then the profile cascade on the image
#: and on its mirror (it finds faces turned one way only).
FRONTAL = "haarcascade_frontalface_alt2.xml"
PROFILE = "haarcascade_profileface.xml"


def cascade_path(name: str) -> str:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder or "", name)
    if not folder or not os.path.isfile(path):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} ships no Haar cascade {name!r}; face detection needs opencv-python-headless 4.x "
            "(pip install 'opencv-python-headless>=4.9,<5')"
        )
    return path


class FaceDetector:
    """The largest face of an image, by OpenCV's Haar cascades, and the aligned crop around it.

    Args:
        alignment: How the training crops sit around a detected face.
        min_face: The smallest face searched for, as a share of the image's shorter side.
        neighbours: How many overlapping detections a face needs (higher: fewer false faces, more missed ones).
    """

    def __init__(self, alignment: FaceAlignment = FaceAlignment(), min_face: float = 0.08, neighbours: int = 4) -> None:
        self.alignment, self.min_face, self.neighbours = alignment, min_face, neighbours
        self._cascades: Optional[tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]] = None

    def _load(self) -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
        if self._cascades is None:  # loaded in each process that uses it: a CascadeClassifier does not pickle
            self._cascades = (
                cv2.CascadeClassifier(cascade_path(FRONTAL)),
                cv2.CascadeClassifier(cascade_path(PROFILE)),
            )
        return self._cascades

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cascades": None}

    def detect(self, image: np.ndarray) -> Optional[Box]:
        """The box of the largest face in an RGB (or grey) uint8 image, or ``None``."""
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        grey = cv2.equalizeHist(grey)
        side = max(20, int(self.min_face * min(grey.shape[:2])))
        frontal, profile = self._load()
        for cascade, mirrored in ((frontal, False), (profile, False), (profile, True)):
            found = cascade.detectMultiScale(
                grey[:, ::-1] if mirrored else grey, scaleFactor=1.1, minNeighbors=self.neighbours, minSize=(side, side)
            )
            if len(found):
                x, y, w, h = (int(v) for v in max(found, key=lambda b: b[2] * b[3]))
                return (grey.shape[1] - x - w, y, w, h) if mirrored else (x, y, w, h)
        return None

    def crop_box(self, image: np.ndarray) -> Optional[Box]:
        """The region an aligned crop of the largest face covers (it may reach past the image's edges), or ``None``."""
        face = self.detect(image)
        return None if face is None else self.alignment.crop_box(face)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    width, height = min(ax1, bx1) - max(a[0], b[0]), min(ay1, by1) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
