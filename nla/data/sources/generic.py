"""Any FER dataset as an image-folder tree (``root/<split>/<class>/*``) or as a CSV of ``path,label``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from nla.data.files import IMAGE_SUFFIXES
from nla.data.samples import DataError, Samples, check_label_range, check_unique_names, csv_records

# Accepted folder names for each split, first match wins.
SPLIT_FOLDERS = {"train": ("train", "training"), "valid": ("val", "valid", "validation"), "test": ("test",)}


def has_split_folders(root: Path) -> bool:
    """Whether ``root`` is laid out by split (``root/train/<class>/...``) rather than by class alone."""
    return any(find_split_folder(root, split) is not None for split in SPLIT_FOLDERS)


def find_split_folder(root: Path, split: str) -> Optional[Path]:
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of an image-folder tree: the sorted sub-folders of its first split folder (train, then
    val, then test), or of the root itself when it has no split folders (``root/<class>/<image>``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image-folder root {str(root)!r} does not exist or is not a folder")
    folder = next((f for f in (find_split_folder(root, split) for split in SPLIT_FOLDERS) if f is not None), root)
    classes = tuple(
        sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    )
    if not classes:
        raise DataError(
            f"{folder} has no class sub-folders; expected {folder}/<class>/<image> "
            "(or <split>/<class>/<image> with splits train, val and test)"
        )
    return classes


def read_image_folder(root: str | Path, split: str, classes: Optional[Sequence[str]] = None) -> Samples:
    """``root/<split>/<class>/*``, labels by the position of the folder's name in ``classes``."""
    root = Path(root)
    classes = tuple(classes) if classes else folder_classes(root)
    folder = find_split_folder(root, split)
    if folder is None:
        hint = ""
        if split == "test" and find_split_folder(root, "valid") is not None:
            hint = " (to validate a fit on its val folder: --data.val_split valid)"
        raise DataError(
            f"image-folder root {str(root)!r} has no folder for split {split!r}; looked for {SPLIT_FOLDERS[split]}"
            + hint
        )
    return read_class_folders(folder, classes)


def read_class_folders(folder: str | Path, classes: Optional[Sequence[str]] = None) -> Samples:
    """``folder/<class>/*`` (nested folders included), labels by the position of the class folder's name in
    ``classes`` (default: the sorted class folders)."""
    folder = Path(folder)
    classes = tuple(classes) if classes else folder_classes(folder)
    unknown = sorted(
        e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith(".") and e.name not in classes
    )
    if unknown:
        raise DataError(f"{folder} has class folder(s) {unknown} that are not among the classes {list(classes)}")
    paths, labels, names = [], [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for dirpath, _, files in sorted(os.walk(class_dir)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_SUFFIXES):
                    path = Path(dirpath) / file
                    paths.append(str(path))
                    labels.append(label)
                    names.append(str(path.relative_to(folder)))
    return Samples(paths, np.asarray(labels, dtype=np.int64), classes, names, [f"{folder}/{n}" for n in names])


def two_column_rows(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, str, str]]:
    """``(first, second, origin)`` for each row of a CSV whose header starts with ``columns``
    (a byte-order mark before the header is dropped)."""
    reader = csv_records(path)
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != list(columns):
        raise DataError(f"{path}:1: expected the header '{','.join(columns)}', got {header!r}")
    for number, record in enumerate(reader, start=2):
        if not record:
            continue
        origin = f"{path}:{number}"
        if len(record) < 2:
            raise DataError(f"{origin}: expected '<{columns[0]}>,<{columns[1]}>', got {record!r}")
        if len(record) > len(header):  # an unquoted comma in a path would shift the label
            raise DataError(
                f"{origin}: {len(record)} columns where the header has {len(header)}, got {record!r} (quote a path "
                'that holds a comma: "a,b.jpg")'
            )
        yield record[0].strip(), record[1].strip(), origin


def read_csv_list(csv_path: str | Path, classes: Sequence[str], image_root: Optional[str | Path] = None) -> Samples:
    """A CSV with a ``path,label`` header; a label is a class name or an index into ``classes``.

    Relative paths are taken from ``image_root``, or else from the CSV's own folder.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"label list {str(csv_path)!r} does not exist")
    base = Path(image_root) if image_root else csv_path.parent
    index = {name: i for i, name in enumerate(classes)}
    paths, labels, names, origins = [], [], [], []
    for name, label, origin in two_column_rows(csv_path, ("path", "label")):
        if label in index:
            labels.append(index[label])
        elif label.lstrip("-").isdigit():
            labels.append(int(label))
        else:
            raise DataError(f"{origin}: label {label!r} is neither a class name {list(classes)} nor an integer index")
        paths.append(str(base / name))
        names.append(name)
        origins.append(origin)
    labels_array = np.asarray(labels, dtype=np.int64)
    check_label_range(labels_array, len(classes), origins)
    check_unique_names([os.path.normpath(p) for p in paths], origins)
    return Samples(paths, labels_array, tuple(classes), names, origins)
