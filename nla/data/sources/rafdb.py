"""RAF-DB basic: the layout RAF-DB ships, and the common re-upload with one folder per label."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from nla.data.samples import DataError, Samples, check_label_range
from nla.data.sources.generic import two_column_rows

# Label codes 1..7 in the files map to indices 0..6 in this order.
CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
LABEL_CODE_OFFSET = 1
Layout = Literal["auto", "basic", "folders"]
Split = Literal["train", "test"]


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
    for kind in (["basic", "folders"] if layout == "auto" else [layout]):
        for base in candidates[kind]:
            if (base / markers[kind]).is_file():
                return kind, base
    raise DataError(
        f"no RAF-DB found at {str(root)!r}: expected basic/EmoLabel/list_patition_label.txt (the layout RAF-DB ships)"
        " or train_labels.csv beside train/<label>/ folders (the re-upload layout), in that folder or in basic/ or DATASET/"
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
    labels = np.asarray(codes, dtype=np.int64) - LABEL_CODE_OFFSET
    check_label_range(labels, len(CLASSES), origins, LABEL_CODE_OFFSET)
    return Samples(list(paths), labels, CLASSES, list(names), list(origins))


def _parse_code(text: str, origin: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{origin}: label {text!r} is not an integer; expected a code in 1..7") from None


def _read_basic(base: Path, split: str) -> list[tuple[str, int, str, str]]:
    label_file = base / "EmoLabel" / "list_patition_label.txt"
    image_dir = base / "Image" / "aligned"
    rows = []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{label_file}:{number}"
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{origin}: expected '<name>.jpg <label>', got {line!r}")
        name, code = parts
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
