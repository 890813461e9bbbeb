"""The README's pictures of face detection and of label issues, made from a real run.

RAF-DB's images are licensed for research only and may not be shipped with nla, so every face in these
pictures is pixelated: they show what nla draws, not the dataset.

    python docs/figures/make_figures.py detection --ckpt_path RUN/checkpoints/last.ckpt --data-root ../shared/data/rafdb
    python docs/figures/make_figures.py suspects --csv RUN/label-issues/label_issues.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.face_detection import composites
from nla.data import eval_transform, load_image, read_rafdb
from nla.data.images import crop_to_box
from nla.export import load_checkpoint
from nla.faces import FaceDetector

HERE = Path(__file__).resolve().parent


def pixelate(image: np.ndarray, blocks: int = 10) -> np.ndarray:
    small = cv2.resize(image, (blocks, blocks), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)


def detection(args: argparse.Namespace) -> None:
    module, preprocessing = load_checkpoint(args.ckpt_path)
    transform = eval_transform(preprocessing["image_size"], preprocessing["mean"], preprocessing["std"])
    detector = FaceDetector()
    photos = [
        p
        for p in composites(read_rafdb(args.data_root, "test").paths, 40, seed=args.seed)
        if detector.crop_box(p[0]) is not None
    ][:3]
    figure = Figure(figsize=(12, 4.4))
    for k, (photo, (x, y, side, _), _) in enumerate(photos):
        box = detector.crop_box(photo)
        assert box is not None
        with torch.no_grad():
            probs = module(transform(image=crop_to_box(photo, box))["image"][None]).softmax(1)[0]
        shown = photo.copy()
        shown[y : y + side, x : x + side] = pixelate(shown[y : y + side, x : x + side])
        bx, by, bw, bh = box
        cv2.rectangle(shown, (bx, by), (bx + bw, by + bh), (255, 40, 40), max(2, photo.shape[0] // 150))
        axis = figure.add_subplot(1, 3, k + 1)
        axis.imshow(shown)
        name = preprocessing["class_names"][int(probs.argmax())]
        axis.set_title(f"{name} ({float(probs.max()):.0%})", fontsize=11)
        axis.axis("off")
    figure.suptitle(
        "nla predict --data.detect_faces true: the crop it takes (red) and its prediction "
        "(faces pixelated: RAF-DB may not be shipped)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(args.out or HERE / "face-detection-example.png", dpi=70)


def suspects(args: argparse.Namespace) -> None:
    with open(args.csv, newline="") as handle:
        rows = list(csv.DictReader(handle))[: args.top]
    columns = 6
    figure = Figure(figsize=(1.9 * columns, 2.25 * ((len(rows) + columns - 1) // columns)))
    for i, row in enumerate(rows):
        axis = figure.add_subplot((len(rows) + columns - 1) // columns, columns, i + 1)
        axis.imshow(pixelate(load_image(row["path"])))
        changed = "  (changed)" if row.get("label_was_changed") == "True" else ""
        axis.set_title(f"{i + 1}. {row['given_label']}{changed}\n-> {row['suggested_label']}", fontsize=8)
        axis.axis("off")
    figure.suptitle(
        "nla label-issues: given label -> the model's; '(changed)': made noisy by the protocol (faces pixelated)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(args.out or HERE / "label-issues-example.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="figure", required=True)
    detect = commands.add_parser("detection")
    detect.add_argument("--ckpt_path", required=True)
    detect.add_argument("--data-root", required=True)
    detect.add_argument("--seed", type=int, default=11)
    detect.add_argument("--out")
    grid = commands.add_parser("suspects")
    grid.add_argument("--csv", required=True)
    grid.add_argument("--top", type=int, default=18)
    grid.add_argument("--out")
    args = parser.parse_args()
    {"detection": detection, "suspects": suspects}[args.figure](args)


if __name__ == "__main__":
    main()
