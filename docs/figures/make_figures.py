"""The README's pictures of photos and videos and of label issues, made from a real run.

RAF-DB's images are licensed for research only and may not be shipped with nla, so every face in these
pictures is pixelated: they show what nla draws, not the dataset.

    python docs/figures/make_figures.py photos --ckpt_path RUN/checkpoints/last.ckpt --data-root ../shared/data/rafdb
    python docs/figures/make_figures.py suspects --csv RUN/label-issues/label_issues.csv
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nla.callbacks.predictions import expression_timeline, faces_figure, sort_rows
from nla.data import load_image, read_rafdb
from tests.fakes import background, groups, paste

HERE = Path(__file__).resolve().parent


def pixelate(image: np.ndarray, blocks: int = 10) -> np.ndarray:
    small = cv2.resize(image, (blocks, blocks), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)


def photos_and_videos(args: argparse.Namespace) -> None:
    """A photo of several RAF-DB test faces and a short clip of three of them in turn, through the real
    ``nla predict``; the photo is drawn with the faces pixelated afterwards, beside the clip's timeline."""
    test = read_rafdb(args.data_root, "test")
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="nla-figure-"))
    (work / "media").mkdir()
    photo, boxes = groups(test.paths, 1, seed=args.seed)[0]
    cv2.imwrite(str(work / "media/photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    clip = [test.paths[int(rng.choice(np.flatnonzero(test.labels == test.classes.index(name))))] for name in args.clip]
    writer = cv2.VideoWriter(str(work / "media/clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    backdrop = background(240, 320, rng)
    for k in range(20 * len(clip)):  # two seconds a face, drifting right
        frame = backdrop.copy()
        paste(frame, load_image(clip[k // 20]), 60 + 2 * (k % 20), 50, 140)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    command = [sys.executable, "-m", "nla", "predict", "--ckpt_path", args.ckpt_path, "--data.prediction.root"]
    command += [
        str(work / "media"),
        "--data.faces.detect",
        "true",
        "--data.faces.choice",
        "all",
        "--data.prediction.fps",
        "5",
    ]
    subprocess.run([*command, "--trainer.default_root_dir", str(work / "run")], check=True)
    rows = sort_rows(work / "run/predict/predictions.csv")
    classes = [key[len("prob_") :] for key in rows[0] if key.startswith("prob_")]
    shown = photo.copy()
    for x, y, side, _ in boxes:
        shown[y : y + side, x : x + side] = pixelate(shown[y : y + side, x : x + side])
    photo_rows = [row for row in rows if row["path"].endswith("photo.png")]
    faces_figure(shown, photo_rows).savefig(work / "photo.png", dpi=80)
    timeline = expression_timeline([row for row in rows if row["path"].endswith("clip.mp4")], classes, "a clip")
    assert timeline is not None, "the clip gave no predictions"
    timeline.savefig(work / "timeline.png", dpi=80)
    figure = Figure(figsize=(14, 4.6))
    panels = figure.subplots(1, 2, width_ratios=(1, 1.3))
    shown_panels = (("photo.png", "--data.faces.choice all"), ("timeline.png", "a video, --data.prediction.fps 5"))
    for axis, (name, title) in zip(panels, shown_panels):
        axis.imshow(cv2.cvtColor(cv2.imread(str(work / name)), cv2.COLOR_BGR2RGB))
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.suptitle(
        f"nla predict on a photo and a video of {', '.join(args.clip)} in turn (faces pixelated: RAF-DB may not be "
        "shipped)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(args.out or HERE / "photos-and-videos.png", dpi=80)
    shutil.rmtree(work)


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
    media = commands.add_parser("photos")
    media.add_argument("--ckpt_path", required=True)
    media.add_argument("--data-root", required=True)
    media.add_argument("--seed", type=int, default=4)
    media.add_argument("--clip", nargs="+", default=["Happiness", "Surprise", "Sadness"], help="classes, in turn")
    media.add_argument("--out")
    grid = commands.add_parser("suspects")
    grid.add_argument("--csv", required=True)
    grid.add_argument("--top", type=int, default=18)
    grid.add_argument("--out")
    args = parser.parse_args()
    {"photos": photos_and_videos, "suspects": suspects}[args.figure](args)


if __name__ == "__main__":
    main()
