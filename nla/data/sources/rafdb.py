"""RAF-DB basic: the layout RAF-DB ships, and the common re-upload with one folder per label."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from nla.data.samples import DataError, Samples, check_label_range, check_unique_names, read_text_lines
from nla.data.sources.generic import two_column_rows

# Label codes 1..7 in the files map to indices 0..6 in this order.
CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
LABEL_CODE_OFFSET = 1
# Normalisation statistics of RAF-DB's aligned training images, as the authors' code uses them.
MEAN = (0.577, 0.4494, 0.4001)
STD = (0.2628, 0.2395, 0.2383)
Layout = Literal["auto", "basic", "folders"]
Split = Literal["train", "test"]
# The noisy-label files that the noisy-label FER papers (EAC and later) use, by noise rate.
STANDARD_NOISE_FILES = {0.1: "noise01.txt", 0.2: "noise02.txt", 0.3: "noise03.txt"}


def find_layout(root: str | Path, layout: Layout = "auto") -> tuple[str, Path]:
    """(layout, base folder) for ``root``, which may hold ``basic/`` or be ``basic/`` itself, or hold ``DATASET/``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"RAF-DB root {str(root)!r} does not exist or is not a folder")
    candidates = {
        "basic": [root / "basic", root],
        "folders": [root / "DATASET", root],
    }
    markers = {"basic": "EmoLabel/list_patition_label.txt", "folders": "train_labels.csv"}
    for kind in ["basic", "folders"] if layout == "auto" else [layout]:
        for base in candidates[kind]:
            if (base / markers[kind]).is_file():
                return kind, base
    raise DataError(
        f"no RAF-DB found at {str(root)!r}: expected basic/EmoLabel/list_patition_label.txt (the layout RAF-DB ships)"
        " or train_labels.csv beside train/<label>/ folders (the re-upload layout), in that folder or in basic/ or "
        "DATASET/"
    )


def canonical_name(file_name: str) -> str:
    """``train_00001_aligned.jpg`` -> ``train_00001.jpg``, the name RAF-DB's label files use."""
    return file_name.replace("_aligned", "")


def read_rafdb(root: str | Path, split: Split = "train", layout: Layout = "auto") -> Samples:
    """The ``split`` of RAF-DB basic, with labels 1..7 mapped to indices 0..6 (see ``CLASSES``)."""
    if split not in ("train", "test"):
        raise DataError(f"RAF-DB has splits 'train' and 'test', not {split!r}")
    kind, base = find_layout(root, layout)
    rows = _read_basic(base, split) if kind == "basic" else _read_folders(base, split)
    paths, codes, names, origins = zip(*rows) if rows else ((), (), (), ())
    check_unique_names(names, origins)
    labels = np.asarray(codes, dtype=np.int64) - LABEL_CODE_OFFSET
    check_label_range(labels, len(CLASSES), origins, LABEL_CODE_OFFSET)
    return Samples(list(paths), labels, CLASSES, list(names), list(origins))


def _parse_code(text: str, origin: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{origin}: label {text!r} is not an integer; expected a code in 1..7") from None


def _read_basic(base: Path, split: str) -> list[tuple[str, int, str, str]]:
    """Every row of the label file is a training or a test image; a row of neither split stops the read."""
    label_file = base / "EmoLabel" / "list_patition_label.txt"
    image_dir = base / "Image" / "aligned"
    rows = []
    lines = read_text_lines(label_file)
    if not lines:
        raise DataError(f"{label_file}: is empty; expected a line '<name>.jpg <label>' per image")
    for origin, line in lines:
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{origin}: expected '<name>.jpg <label>', got {line!r}")
        name, code = parts
        if not name.startswith(("train_", "test_")):
            raise DataError(
                f"{origin}: image name {name!r} starts with neither 'train_' nor 'test_', which is how "
                "RAF-DB names its split"
            )
        if name.startswith(f"{split}_"):
            stem = name.rsplit(".", 1)[0]
            rows.append((str(image_dir / f"{stem}_aligned.jpg"), _parse_code(code, origin), name, origin))
    return rows


def _read_folders(base: Path, split: str) -> list[tuple[str, int, str, str]]:
    label_file = base / f"{split}_labels.csv"
    if not label_file.is_file():
        raise DataError(f"RAF-DB label file {str(label_file)!r} does not exist")
    rows = []
    for name, code_text, origin in two_column_rows(label_file, ("image", "label")):
        code = _parse_code(code_text, origin)
        rows.append((str(base / split / str(code) / name), code, canonical_name(name), origin))
    return rows


def standard_noise_file(root: str | Path, rate: float, layout: Layout = "auto") -> Path | None:
    """Where RAF-DB keeps its standard noisy-label file for ``rate`` (beside ``list_patition_label.txt``), or
    ``None`` for a rate it has no file for. The path may not exist in a given copy."""
    name = next((file for known, file in STANDARD_NOISE_FILES.items() if abs(known - rate) < 1e-9), None)
    if name is None:
        return None
    kind, base = find_layout(root, layout)
    folders = [base / "EmoLabel"] if kind == "basic" else [base / "EmoLabel", base.parent / "basic" / "EmoLabel", base]
    return next((folder / name for folder in folders if (folder / name).is_file()), folders[0] / name)
