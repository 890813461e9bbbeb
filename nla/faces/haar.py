"""OpenCV's Haar cascades, which ship inside the opencv-python-headless 4.x wheel: boxes, no landmarks. The frontal
cascade first; where it finds nothing, the profile cascade on the image and on its mirror (it finds faces turned one
way only). The fallback that needs no install beyond nla's own."""

from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np

from nla.faces.geometry import Face, FaceAlignment

FRONTAL = "haarcascade_frontalface_alt2.xml"
PROFILE = "haarcascade_profileface.xml"
#: Measured on RAF-DB's aligned crops pasted into photos (benchmarks/results/face-detection.json): the cascade's box
#: is a little larger than the crop and centred slightly above it.
ALIGNMENT = FaceAlignment(scale=0.929, shift_x=0.015, shift_y=0.033)


def cascade_path(name: str) -> str:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder or "", name)
    if not folder or not os.path.isfile(path):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} ships no Haar cascade {name!r}; face detection needs opencv-python-headless 4.x "
            "(pip install 'opencv-python-headless>=4.9,<5')"
        )
    return path


class HaarBackend:
    """Every face the cascades find in an RGB (or grey) uint8 image.

    Args:
        min_face: The smallest face searched for, as a share of the image's shorter side.
        neighbours: How many overlapping detections a face needs (higher: fewer false faces, more missed ones).
    """

    name = "haar"
    alignment = ALIGNMENT
    template = None  # no landmarks

    def __init__(self, min_face: float = 0.08, neighbours: int = 4) -> None:
        self.min_face, self.neighbours = min_face, neighbours
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

    def faces(self, image: np.ndarray) -> list[Face]:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        grey = cv2.equalizeHist(grey)
        side = max(20, int(self.min_face * min(grey.shape[:2])))
        frontal, profile = self._load()
        for cascade, mirrored in ((frontal, False), (profile, False), (profile, True)):
            found = cascade.detectMultiScale(
                grey[:, ::-1] if mirrored else grey, scaleFactor=1.1, minNeighbors=self.neighbours, minSize=(side, side)
            )
            if len(found):
                boxes = [tuple(int(v) for v in box) for box in found]
                if mirrored:
                    boxes = [(grey.shape[1] - x - w, y, w, h) for x, y, w, h in boxes]
                return [Face(box) for box in boxes]  # type: ignore[arg-type]
        return []
