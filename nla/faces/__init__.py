"""Faces in photos and videos: finding them (:mod:`nla.faces.detector`, with the backends :mod:`nla.faces.haar`, ...)
and cropping each the way the training images were aligned (:mod:`nla.faces.geometry`).

FER models are trained on aligned face crops; a photo of a person has much else around the face, and squashing it
whole to the model's input gives the model something it never saw. ``--data.faces.detect true`` finds the faces
first. Detectors are chosen, and crops placed, by measurement on real RAF-DB faces pasted into larger photos
(``benchmarks/face_detection.py``). Nothing is downloaded: every backend's model ships inside its wheel.
"""

from nla.faces.detector import Backend, FaceDetector
from nla.faces.geometry import Box, Face, FaceAlignment, LandmarkTemplate, aligned_crop, box_iou
from nla.faces.haar import cascade_path

__all__ = [
    "Backend",
    "Box",
    "Face",
    "FaceAlignment",
    "FaceDetector",
    "LandmarkTemplate",
    "aligned_crop",
    "box_iou",
    "cascade_path",
]
