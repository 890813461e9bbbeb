"""Face detection for raw photos, measured: real aligned RAF-DB test faces pasted at random positions and scales
into larger backgrounds, so the right crop is known exactly.

For each detector setting it reports the detection rate (the crop nla would take overlaps the pasted face with
IoU >= 0.5), the mean IoU of that crop with the pasted face, and the time per image; and it measures where the
aligned crop sits relative to the detector's box, which is what ``nla.faces.FaceAlignment`` holds.

    python benchmarks/face_detection.py --data-root ../shared/data/rafdb --json benchmarks/results/face-detection.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from nla.data import load_image, read_rafdb
from nla.faces import FaceAlignment, FaceDetector, box_iou, cascade_path


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, coloured backdrop with some texture: low-frequency noise blown up, plus fine grain."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def composites(paths: list[str], count: int, seed: int) -> list[tuple[np.ndarray, tuple[int, int, int, int], str]]:
    """``(photo, pasted face box, source path)``: a face 15-45% of the photo's shorter side, anywhere in it."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=count, replace=False)
    made = []
    for i in chosen:
        height, width = int(rng.integers(320, 641)), int(rng.integers(320, 641))
        photo = background(height, width, rng)
        side = int(rng.uniform(0.15, 0.45) * min(height, width))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        photo[y : y + side, x : x + side] = cv2.resize(
            load_image(paths[i]), (side, side), interpolation=cv2.INTER_LINEAR
        )
        made.append((photo, (x, y, side, side), paths[i]))
    return made


class SingleCascade(FaceDetector):
    """One cascade alone, for comparison with nla's detector (the frontal cascade, then the profile one)."""

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = name

    def detect(self, image):
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = max(20, int(self.min_face * min(grey.shape[:2])))
        found = cv2.CascadeClassifier(cascade_path(self.name)).detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=self.neighbours, minSize=(side, side)
        )
        return tuple(int(v) for v in max(found, key=lambda b: b[2] * b[3])) if len(found) else None


def evaluate(detector: FaceDetector, photos) -> dict:
    hits, ious, misses, seconds = 0, [], 0, []
    for photo, truth, _ in photos:
        start = time.perf_counter()
        crop = detector.crop_box(photo)
        seconds.append(time.perf_counter() - start)
        if crop is None:
            misses += 1
            continue
        iou = box_iou(crop, truth)
        ious.append(iou)
        hits += iou >= 0.5
    return {
        "detection_rate": hits / len(photos),
        "no_face_found": misses / len(photos),
        "wrong_box": (len(photos) - misses - hits) / len(photos),
        "mean_iou_when_found": statistics.fmean(ious) if ious else 0.0,
        "median_iou_when_found": statistics.median(ious) if ious else 0.0,
        "ms_per_image": 1000 * statistics.median(seconds),
    }


def measure_alignment(detector: FaceDetector, photos) -> dict:
    """Median crop side over box width, and crop-centre offsets in box widths, over confident detections."""
    scale, shift_x, shift_y = [], [], []
    for photo, (x, y, side, _), _ in photos:
        face = detector.detect(photo)
        if face is None:
            continue
        fx, fy, fw, fh = face
        if box_iou(FaceAlignment(scale=1.0, shift_x=0.0, shift_y=0.0).crop_box(face), (x, y, side, side)) < 0.5:
            continue
        scale.append(side / fw)
        shift_x.append((x + side / 2 - (fx + fw / 2)) / fw)
        shift_y.append((y + side / 2 - (fy + fh / 2)) / fw)
    return {
        "scale": statistics.median(scale),
        "shift_x": statistics.median(shift_x),
        "shift_y": statistics.median(shift_y),
        "faces": len(scale),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="a RAF-DB copy; its test faces are pasted")
    parser.add_argument("--images", type=int, default=400, help="composite photos per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    test = read_rafdb(args.data_root, "test")
    # The alignment is measured on one half of the test faces and every detector evaluated on the other.
    half = len(test) // 2
    calibration = composites(test.paths[:half], args.images, args.seed)
    photos = composites(test.paths[half:], args.images, args.seed + 1)
    alignment = measure_alignment(FaceDetector(), calibration)
    measured = FaceAlignment(
        round(alignment["scale"], 3), round(alignment["shift_x"], 3), round(alignment["shift_y"], 3)
    )
    candidates = {
        "nla: frontal alt2, then profile (both ways)": FaceDetector(alignment=measured),
        **{
            f"{name} alone": SingleCascade(name, alignment=measured)
            for name in (
                "haarcascade_frontalface_default.xml",
                "haarcascade_frontalface_alt.xml",
                "haarcascade_frontalface_alt2.xml",
                "haarcascade_profileface.xml",
            )
        },
        "nla, 3 neighbours": FaceDetector(alignment=measured, neighbours=3),
        "nla, 5 neighbours": FaceDetector(alignment=measured, neighbours=5),
        "nla with no crop alignment (the detector's box)": FaceDetector(alignment=FaceAlignment(1.0, 0.0, 0.0)),
    }
    results = {
        "data": str(args.data_root),
        "images": args.images,
        "opencv": cv2.__version__,
        "alignment_measured": alignment,
        "detectors": {},
    }
    print(
        f"alignment, measured on {alignment['faces']} faces: crop side = {alignment['scale']:.3f} x box width, "
        f"centre shifted ({alignment['shift_x']:+.3f}, {alignment['shift_y']:+.3f}) box widths"
    )
    print(f"{'detector':<52}{'rate':>7}{'none':>7}{'wrong':>7}{'IoU':>7}{'ms':>7}")
    for label, detector in candidates.items():
        result = evaluate(detector, photos)
        results["detectors"][label] = result
        print(
            f"{label:<52}{result['detection_rate']:>7.1%}{result['no_face_found']:>7.1%}{result['wrong_box']:>7.1%}"
            f"{result['mean_iou_when_found']:>7.3f}{result['ms_per_image']:>7.1f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
