"""Faces in photos: the largest face is found and cropped the way the training crops are aligned."""

import cv2
import numpy as np
import pytest

from nla.data.files import crop_to_box
from nla.faces import Face, FaceAlignment, FaceDetector, box_iou
from tests.conftest import real_dataset


def test_the_aligned_crop_follows_the_measured_placement():
    alignment = FaceAlignment(scale=0.5, shift_x=0.1, shift_y=-0.2)
    assert alignment.crop_box((100, 50, 40, 40)) == (114, 52, 20, 20)  # centre (120, 70) + (4, -8), side 20
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_a_crop_past_the_edges_repeats_the_edge_pixels():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    crop = crop_to_box(image, (-2, 1, 4, 4))
    assert crop.shape == (4, 4, 3)
    assert np.array_equal(crop[0, 2], image[1, 0]) and np.array_equal(crop[0, 0], image[1, 0])  # repeated left edge
    assert np.array_equal(crop[2, 3], image[3, 1]) and np.array_equal(crop[3, 3], image[3, 1])  # and the bottom one


def test_no_face_in_an_image_without_one():
    rng = np.random.default_rng(0)
    backdrop = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (300, 240), interpolation=cv2.INTER_CUBIC)
    assert FaceDetector().detect(backdrop) is None


@pytest.mark.slow
@pytest.mark.realdata
def test_real_faces_pasted_into_photos_are_found_and_cropped():
    """Real aligned RAF-DB test faces, pasted at random positions and scales into larger backgrounds (the measurement
    of benchmarks/face_detection.py, on fewer images): most are found, and the crop covers the pasted face."""
    from nla.data import read_rafdb
    from nla.faces import box_iou
    from tests.fakes import composites

    photos = composites(read_rafdb(real_dataset("rafdb"), "test").paths, 40, seed=1)
    detector = FaceDetector()
    crops = [(detector.crop_box(photo), truth) for photo, truth, _ in photos]
    ious = [box_iou(crop, truth) for crop, truth in crops if crop is not None]
    found, wrong = sum(iou >= 0.5 for iou in ious), sum(iou < 0.5 for iou in ious)
    # Measured on 300 such photos: 76% found, mean IoU 0.85 (benchmarks/results/face-detection.json).
    assert found / len(photos) >= 0.6 and wrong / len(photos) <= 0.05
    assert sum(ious) / len(ious) >= 0.75


def test_auto_falls_back_to_the_cascades_without_onnxruntime(monkeypatch):
    from nla.errors import ConfigError
    from nla.faces import retinaface

    assert FaceDetector("auto").name == "retinaface"  # installed with nla[dev]
    monkeypatch.setattr(retinaface, "available", lambda: False)
    with pytest.warns(UserWarning, match=r"miss about one face in five; pip install onnxruntime"):
        assert FaceDetector("auto").name == "haar"
    with pytest.raises(ConfigError, match=r"face_detector retinaface needs onnxruntime: pip install onnxruntime"):
        FaceDetector("retinaface")


def test_a_large_photo_is_searched_scaled_down_and_its_faces_given_in_its_own_pixels():
    detector = FaceDetector("haar", max_side=100)
    seen = []
    detector.backend.faces = lambda image: seen.append(image.shape) or [Face((10, 20, 30, 30))]
    (face,) = detector.faces(np.zeros((400, 600, 3), np.uint8))
    assert seen == [(67, 100, 3)] and face.box == (60, 120, 180, 180)
