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
import torch

from nla.data import read_rafdb
from nla.faces import FaceAlignment, FaceDetector, box_iou
from tests.fakes import Photo, composites, groups


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
