"""Fake data for the tests and benchmarks: tiny datasets in the real on-disk layouts (each class a bright square at
its own position on a noisy background, so a small model learns the task in a few steps; nothing here resembles a
face), and photos made of real aligned faces pasted into backgrounds.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from nla.data import load_image
from nla.faces import box_iou


def synthetic_image(
    label: int, num_classes: int, size: int, rng: np.random.Generator, gray: bool = False
) -> np.ndarray:
    image: np.ndarray = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    cells = int(np.ceil(np.sqrt(num_classes)))
    step = size // cells
    row, col = divmod(label, cells)
    image[row * step : (row + 1) * step, col * step : (col + 1) * step] = 230
    image[..., label % 3] //= 2  # a colour cue as well
    if gray:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def _labels(per_class: int | Sequence[int], num_classes: int, rng: np.random.Generator) -> np.ndarray:
    counts = [per_class] * num_classes if isinstance(per_class, int) else list(per_class)
    return rng.permutation(np.repeat(np.arange(num_classes), counts))


def write_rafdb(
    root: str | Path,
    train_per_class: int | Sequence[int] = 8,
    test_per_class: int | Sequence[int] = 4,
    size: int = 32,
    layout: str = "basic",
    seed: int = 0,
) -> Path:
    """RAF-DB basic with 7 classes, in the ``"basic"`` layout RAF-DB ships or the re-upload's ``"folders"`` layout."""
    root, rng = Path(root), np.random.default_rng(seed)
    splits = {"train": _labels(train_per_class, 7, rng), "test": _labels(test_per_class, 7, rng)}
    if layout == "basic":
        lines = []
        for split, labels in splits.items():
            digits = 5 if split == "train" else 4
            for i, label in enumerate(labels, start=1):
                name = f"{split}_{i:0{digits}d}"
                _write(
                    root / "basic" / "Image" / "aligned" / f"{name}_aligned.jpg", synthetic_image(label, 7, size, rng)
                )
                lines.append(f"{name}.jpg {label + 1}")
        (root / "basic" / "EmoLabel").mkdir(parents=True, exist_ok=True)
        (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    elif layout == "folders":
        base = root / "DATASET"
        for split, labels in splits.items():
            rows = []
            for i, label in enumerate(labels, start=1):
                name = f"{split}_{i:05d}_aligned.jpg"
                _write(base / split / str(label + 1) / name, synthetic_image(label, 7, size, rng))
                rows.append((name, label + 1))
            with open(base / f"{split}_labels.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "label"])
                writer.writerows(rows)
    else:
        raise ValueError(f"layout must be 'basic' or 'folders', got {layout!r}")
    return root


def write_ferplus(root: str | Path, per_class: int = 4, size: int = 48, seed: int = 0) -> Path:
    """FER+ folders with grayscale PNGs, ``fer2013new.csv`` votes and per-folder ``label.csv``.

    Each image gets 10 votes with a clear majority for its class, except a few that are made
    unknown or not-a-face, which the majority vote drops.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    release: list[list[object]] = [
        [
            "Usage",
            "Image name",
            "neutral",
            "happiness",
            "surprise",
            "sadness",
            "anger",
            "disgust",
            "fear",
            "contempt",
            "unknown",
            "NF",
        ]
    ]
    usage = {"FER2013Train": "Training", "FER2013Valid": "PublicTest", "FER2013Test": "PrivateTest"}
    number = 0
    for folder, usage_name in usage.items():
        rows = []
        labels = [*_labels(per_class, 8, rng), 8, 9]  # one unknown, one not-a-face
        for label in labels:
            name = f"fer{number:07d}.png"
            number += 1
            votes = [0] * 10
            votes[label] = 8
            votes[(label + 1) % 8] = 2
            _write(root / folder / name, synthetic_image(int(label) % 8, 8, size, rng, gray=True))
            rows.append([name, f"(0, 0, {size}, {size})", *votes])
            release.append([usage_name, name, *votes])
        with open(root / folder / "label.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    release.append(["Training", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 10])  # the release's nameless not-a-face rows
    with open(root / "fer2013new.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(release)
    return root


def write_affectnet(root: str | Path, per_class: int = 4, size: int = 64, seed: int = 0) -> Path:
    """AffectNet's ``training.csv`` / ``validation.csv`` with face boxes, plus rows of codes 8-10 that are dropped."""
    root, rng = Path(root), np.random.default_rng(seed)
    header = [
        "subDirectory_filePath",
        "face_x",
        "face_y",
        "face_width",
        "face_height",
        "facial_landmarks",
        "expression",
        "valence",
        "arousal",
    ]
    for file, split in (("training.csv", "train"), ("validation.csv", "val")):
        rows: list[list[object]] = [list(header)]
        for i, code in enumerate([*_labels(per_class, 8, rng), 8, 9, 10]):
            name = f"{i % 3}/{split}_{i:05d}.jpg"
            face = synthetic_image(int(code) % 8, 8, size // 2, rng)
            image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            image[size // 4 : size // 4 + size // 2, size // 4 : size // 4 + size // 2] = face
            _write(root / "Manually_Annotated_Images" / name, image)
            rows.append([name, size // 4, size // 4, size // 2, size // 2, "1.0;2.0", int(code), 0.1, -0.2])
        with open(root / file, "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


def write_image_folder(
    root: str | Path,
    classes: Sequence[str] = ("angry", "happy", "sad"),
    per_class: int = 4,
    size: int = 32,
    splits: Sequence[str] = ("train", "val", "test"),
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<n>.png``."""
    root, rng = Path(root), np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(classes):
            for i in range(per_class):
                _write(root / split / name / f"{i}.png", synthetic_image(label, len(classes), size, rng))
    return root


# --- photos: real faces pasted into backgrounds (the face detection benchmark's and tests' photos) ---------

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
