"""The face detector nla uses: a backend chosen by name (``auto`` takes the best one installed), large photos
searched at a bounded size, faces largest first, and the aligned crop of each."""

from __future__ import annotations

import warnings
from typing import Any, Literal, Optional

import cv2
import numpy as np

from nla.errors import ConfigError
from nla.faces import retinaface
from nla.faces.geometry import Box, Face, aligned_crop
from nla.faces.haar import HaarBackend

Backend = Literal["auto", "retinaface", "haar"]


def make_backend(name: Backend) -> Any:
    """``retinaface`` (needs onnxruntime), ``haar``, or ``auto``: RetinaFace where onnxruntime is installed."""
    if name == "retinaface" or (name == "auto" and retinaface.available()):
        if not retinaface.available():
            raise ConfigError(
                "face_detector retinaface needs onnxruntime: pip install onnxruntime, or use face_detector haar"
            )
        return retinaface.RetinaFaceBackend()
    if name in ("auto", "haar"):
        if name == "auto":
            warnings.warn(
                "onnxruntime is not installed, so faces are found with OpenCV's Haar cascades, which miss about one "
                "face in five; pip install onnxruntime for RetinaFace",
                stacklevel=3,
            )
        return HaarBackend()
    raise ConfigError(f"face_detector {name!r}: expected auto, retinaface or haar")


class FaceDetector:
    """Finds the faces of an RGB uint8 image and crops each the way the training images were aligned.

    Args:
        backend: Which detector: ``retinaface`` (faces and their landmarks; needs onnxruntime), ``haar`` (OpenCV's
            cascades: boxes only, always there) or ``auto`` (RetinaFace where onnxruntime is installed).
        max_side: Photos larger than this (pixels, longer side) are searched in a copy scaled down to it; the faces
            are cropped from the full image.
        align: Rotate and scale faces with landmarks so the eyes and mouth land where RAF-DB's crops have them.
    """

    def __init__(self, backend: Backend = "auto", max_side: int = 1024, align: bool = True) -> None:
        self.backend_name, self.max_side, self.align = backend, max_side, align
        self.backend = make_backend(backend)

    @property
    def name(self) -> str:
        return str(self.backend.name)

    def faces(self, image: np.ndarray) -> list[Face]:
        """Every face found, the largest first."""
        longest = max(image.shape[:2])
        factor = 1.0
        if longest > self.max_side:
            factor = longest / self.max_side
            size = (round(image.shape[1] / factor), round(image.shape[0] / factor))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        found = [face.scaled(factor) if factor != 1.0 else face for face in self.backend.faces(image)]
        return sorted(found, key=lambda face: -face.area)

    def crop(self, image: np.ndarray, face: Face, size: int) -> np.ndarray:
        """The ``size`` x ``size`` aligned crop of ``face``."""
        template = self.backend.template if self.align else None
        return aligned_crop(image, face, size, self.backend.alignment, template)

    def detect(self, image: np.ndarray) -> Optional[Box]:
        """The box of the largest face, or ``None``."""
        found = self.faces(image)
        return found[0].box if found else None

    def crop_box(self, image: np.ndarray) -> Optional[Box]:
        """The region an aligned crop of the largest face covers (it may reach past the image's edges), or ``None``:
        what evaluation crops to (:func:`nla.data.prediction.find_faces`)."""
        face = self.detect(image)
        return None if face is None else self.backend.alignment.crop_box(face)
