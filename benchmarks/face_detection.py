"""Face detection for photos, measured: real aligned RAF-DB test faces pasted into larger backgrounds, so the right
answer is known exactly. Three sets of photos, the same for every detector:

- plain: one face, 15-45% of the photo's shorter side, anywhere in a 320-640 px photo;
- rotated: the same, the face turned by up to 30 degrees either way (tilted heads);
- several: 2-5 faces a photo, 12-30% of its shorter side, not overlapping.

For each of nla's detectors (``nla.faces``): the share of faces found (the crop nla takes of the largest face, or of
any face for "several", overlaps the pasted square with IoU >= 0.5), wrong boxes, none found, the mean IoU of the
crop when found, and the time per photo; and where each detector's box sits relative to RAF-DB's crop (what
``FaceAlignment`` holds), measured on a separate set.

    python benchmarks/face_detection.py --data-root ../shared/data/rafdb --json benchmarks/results/face-detection.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from nla.data import load_image, read_rafdb
from nla.faces import FaceAlignment, FaceDetector, box_iou

Photo = tuple[np.ndarray, list[tuple[int, int, int, int]]]


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, coloured backdrop with some texture: low-frequency noise blown up, plus fine grain."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def paste(photo: np.ndarray, face: np.ndarray, x: int, y: int, side: int, angle: float = 0.0) -> None:
    """The face resized to ``side`` and turned by ``angle`` degrees about its centre (the corners it leaves show the
    photo), in place at ``(x, y)``."""
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
    if angle:
        turn = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, 1.0)
        mask = cv2.warpAffine(np.ones((side, side), np.float32), turn, (side, side))[..., None]
        face = cv2.warpAffine(face, turn, (side, side)).astype(np.float32)
        region = photo[y : y + side, x : x + side].astype(np.float32)
        face = (mask * face + (1 - mask) * region).astype(np.uint8)
    photo[y : y + side, x : x + side] = face


def composites(paths: list[str], count: int, seed: int, max_angle: float = 0.0) -> list[tuple[np.ndarray, tuple, str]]:
    """``(photo, pasted face box, source path)``: a face 15-45% of the photo's shorter side, anywhere in it."""
    rng = np.random.default_rng(seed)
    made = []
    for i in rng.choice(len(paths), size=count, replace=False):
        height, width = int(rng.integers(320, 641)), int(rng.integers(320, 641))
        photo = background(height, width, rng)
        side = int(rng.uniform(0.15, 0.45) * min(height, width))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        angle = (
            float(rng.uniform(-max_angle, max_angle)) if max_angle else 0.0
        )  # plain photos: the same draws as before
        paste(photo, load_image(paths[i]), x, y, side, angle)
        made.append((photo, (x, y, side, side), paths[i]))
    return made


def groups(paths: list[str], count: int, seed: int) -> list[Photo]:
    """Photos of 2-5 faces each, 12-30% of the shorter side, not overlapping (placed by rejection)."""
    rng = np.random.default_rng(seed)
    made: list[Photo] = []
    while len(made) < count:
        height, width = int(rng.integers(360, 641)), int(rng.integers(480, 801))
        photo, boxes = background(height, width, rng), []
        for _ in range(int(rng.integers(2, 6))):
            for _ in range(50):
                side = int(rng.uniform(0.12, 0.30) * min(height, width))
                box = (int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1)), side, side)
                if all(box_iou(box, other) == 0 for other in boxes):
                    paste(photo, load_image(paths[int(rng.integers(len(paths)))]), *box[:3])
                    boxes.append(box)
                    break
        made.append((photo, boxes))
    return made


def evaluate(detector: FaceDetector, photos) -> dict:
    """Found, none, wrong and IoU of the largest face's crop against the pasted one, and ms per photo."""
    hits, ious, misses, seconds = 0, [], 0, []
    for photo, truth, *_ in photos:
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
        "ms_per_image": 1000 * statistics.median(seconds),
    }


def evaluate_groups(detector: FaceDetector, photos: list[Photo]) -> dict:
    """The share of all pasted faces whose crop some detected face's crop matches (IoU >= 0.5), false boxes."""
    found = pasted = false = 0
    for photo, boxes in photos:
        crops = [detector.backend.alignment.crop_box(face.box) for face in detector.faces(photo)]
        pasted += len(boxes)
        found += sum(any(box_iou(crop, box) >= 0.5 for crop in crops) for box in boxes)
        false += sum(all(box_iou(crop, box) < 0.5 for box in boxes) for crop in crops)
    return {"faces_found": found / pasted, "false_boxes_per_photo": false / len(photos), "faces": pasted}


def measure_alignment(detector: FaceDetector, photos) -> dict:
    """Median crop side over box width, and crop-centre offsets in box widths, over confident detections."""
    scale, shift_x, shift_y = [], [], []
    for photo, (x, y, side, _), _ in photos:
        face = detector.detect(photo)
        if face is None or box_iou(FaceAlignment(1.0, 0.0, 0.0).crop_box(face), (x, y, side, side)) < 0.5:
            continue
        fx, fy, fw, fh = face
        scale.append(side / fw)
        shift_x.append((x + side / 2 - (fx + fw / 2)) / fw)
        shift_y.append((y + side / 2 - (fy + fh / 2)) / fw)
    return {k: statistics.median(v) for k, v in (("scale", scale), ("shift_x", shift_x), ("shift_y", shift_y))} | {
        "faces": len(scale)
    }


def photo_sets(data_root: str, images: int, seed: int) -> tuple[list, dict[str, list], list[Photo]]:
    """The calibration photos (from one half of the test faces), and the scored sets (from the other half): plain,
    rotated and several faces a photo. The same arguments give the same photos in every benchmark."""
    test = read_rafdb(data_root, "test")
    half = len(test) // 2
    calibration = composites(test.paths[:half], images, seed)
    sets = {
        "plain": composites(test.paths[half:], images, seed + 1),
        "rotated up to 30 degrees": composites(test.paths[half:], images, seed + 2, max_angle=30),
    }
    return calibration, sets, groups(test.paths[half:], images // 2, seed + 3)


HEADER = f"{'detector':<30}{'set':<26}{'found':>7}{'none':>7}{'wrong':>7}{'IoU':>7}{'ms':>7}"


def score(detector, name: str, sets: dict[str, list], several: list[Photo], keep: Optional[int] = None) -> dict:
    """Each set's result for ``detector`` (on the first ``keep`` photos of each), printed as a row under ``HEADER``."""
    entry: dict = {}
    for label, photos in sets.items():
        result = entry[label] = evaluate(detector, photos[:keep])
        print(
            f"{name:<30}{label:<26}{result['detection_rate']:>7.1%}{result['no_face_found']:>7.1%}"
            f"{result['wrong_box']:>7.1%}{result['mean_iou_when_found']:>7.3f}{result['ms_per_image']:>7.1f}"
        )
    entry["several faces"] = evaluate_groups(detector, several[: None if keep is None else keep // 2])
    print(f"{name:<30}{'several faces a photo':<26}{entry['several faces']['faces_found']:>7.1%}")
    return entry


def parse(description: str, argv=None, more=None) -> argparse.Namespace:
    """The photos' arguments every face benchmark shares (``more`` adds its own); threads set as asked."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="a RAF-DB copy; its test faces are pasted")
    parser.add_argument("--images", type=int, default=400, help="photos per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    if more:
        more(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # RetinaFace's onnxruntime session takes torch's thread count
    cv2.setNumThreads(args.threads)
    return args


def write_json(results: dict, path: Optional[str]) -> dict:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv=None) -> dict:
    args = parse(__doc__, argv)
    calibration, sets, several = photo_sets(args.data_root, args.images, args.seed)
    results: dict = {"data": str(args.data_root), "images": args.images, "opencv": cv2.__version__, "detectors": {}}
    print(HEADER)
    for name in ("retinaface", "haar"):
        detector = FaceDetector(name)  # type: ignore[arg-type]
        placement = measure_alignment(detector, calibration)
        entry = {"placement_measured": placement, "placement_used": vars(detector.backend.alignment)}
        results["detectors"][name] = entry | score(detector, name, sets, several)
    return write_json(results, args.json)


if __name__ == "__main__":
    main()
