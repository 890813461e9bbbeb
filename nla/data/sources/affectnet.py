"""AffectNet: ``training.csv`` and ``validation.csv`` with the official columns; validation is the test set."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from nla.data.samples import DataError, Samples, check_unique_names, csv_records

# Expression codes 0..7 are the class indices; 8 None, 9 Uncertain and 10 No-Face are dropped.
CLASSES_8 = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
CLASSES_7 = CLASSES_8[:7]
CODE_NAMES = (*CLASSES_8, "None", "Uncertain", "No-Face")
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression")
LAST_CODE = 10
SPLIT_FILES = {"train": "training.csv", "valid": "validation.csv", "test": "validation.csv"}
Split = Literal["train", "valid", "test"]


def classes_for(num_classes: int) -> tuple[str, ...]:
    if num_classes not in (7, 8):
        raise DataError(f"AffectNet has 8 expression classes, or 7 without contempt; got num_classes={num_classes}")
    return CLASSES_8 if num_classes == 8 else CLASSES_7


def find_image_dir(root: Path) -> Path:
    """Where the ``subDirectory_filePath`` entries are rooted: ``Manually_Annotated_Images/`` if present, else root."""
    for candidate in (root / "Manually_Annotated_Images", root / "Manually_Annotated" / "Manually_Annotated_Images"):
        if candidate.is_dir():
            return candidate
    return root


def read_affectnet(root: str | Path, split: Split = "train", num_classes: Literal[7, 8] = 7) -> Samples:
    """One AffectNet split with its face boxes; codes >= ``num_classes`` (and 8-10 always) are dropped."""
    root = Path(root)
    if split not in SPLIT_FILES:
        raise DataError(f"AffectNet has splits {list(SPLIT_FILES)}, not {split!r}")
    classes = classes_for(num_classes)
    label_file = root / SPLIT_FILES[split]
    if not label_file.is_file():
        raise DataError(
            f"AffectNet label file {str(label_file)!r} does not exist; expected training.csv and validation.csv under "
            "the root"
        )
    image_dir = find_image_dir(root)
    paths, labels, names, origins, boxes = [], [], [], [], []
    left_out = 0
    reader = csv_records(label_file)
    header = next(reader, None)
    if header is None or any(column not in header for column in COLUMNS):
        raise DataError(f"{label_file}:1: expected the columns {', '.join(COLUMNS)}, ...; got {header!r}")
    column = {name: header.index(name) for name in COLUMNS}
    for number, record in enumerate(reader, start=2):
        if not record:
            continue
        origin = f"{label_file}:{number}"
        try:
            code = int(record[column["expression"]])
            box = [float(record[column[k]]) for k in ("face_x", "face_y", "face_width", "face_height")]
        except (ValueError, IndexError):
            raise DataError(
                f"{origin}: expected an integer expression and a numeric face box, got {record[:7]!r}"
            ) from None
        if not 0 <= code <= LAST_CODE:
            raise DataError(f"{origin}: expression code {code} is outside 0..{LAST_CODE}")
        if code >= num_classes:
            left_out += 1
            continue
        name = record[column["subDirectory_filePath"]].strip()
        paths.append(str(image_dir / name))
        labels.append(code)
        names.append(name)
        origins.append(origin)
        boxes.append(box)
    check_unique_names(names, origins)
    notes = (
        [
            f"{label_file.name}: {left_out} rows of expression codes {num_classes}..{LAST_CODE} left out "
            f"({', '.join(CODE_NAMES[num_classes:])})"
        ]
        if left_out
        else []
    )
    return Samples(
        paths,
        np.asarray(labels, dtype=np.int64),
        classes,
        names,
        origins,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        notes=notes,
    )
