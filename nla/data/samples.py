"""A dataset split as a table of image files and integer labels, and the checks run on it before training."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from nla.errors import DataError


@dataclass
class Samples:
    """One split: image ``paths``, integer ``labels`` in ``0..len(classes)-1``, and provenance.

    ``names`` identify each image the way a label file writes it (e.g. ``train_00001.jpg``), and
    ``origins`` say where each label was read (``file:line``) so errors can point at it.
    ``boxes`` optionally hold a face box ``(x, y, w, h)`` per image. ``notes`` say which rows of the
    label files the reader left out by the dataset's protocol (e.g. FER+'s not-a-face votes).
    """

    paths: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    names: list[str]
    origins: list[str]
    boxes: Optional[np.ndarray] = None
    clean_labels: Optional[np.ndarray] = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list, repr=False)  # what the reader left out, and why

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.paths)
        if not (len(self.labels) == len(self.names) == len(self.origins) == n):
            raise ValueError("paths, labels, names and origins must have the same length")
        if self.clean_labels is None:
            self.clean_labels = self.labels.copy()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shipped_labels(self) -> np.ndarray:
        """The labels the dataset ships, before any noise (``clean_labels``, set for every table)."""
        assert self.clean_labels is not None  # set in __post_init__
        return self.clean_labels

    @property
    def flipped(self) -> np.ndarray:
        """Which labels differ from the labels the dataset ships (synthetic or file-given noise)."""
        return self.labels != self.shipped_labels

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Samples:
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            names=[self.names[i] for i in idx],
            origins=[self.origins[i] for i in idx],
            boxes=None if self.boxes is None else self.boxes[idx],
            clean_labels=self.shipped_labels[idx],
        )

    def relabelled(self, labels: np.ndarray, origins: Optional[list[str]] = None) -> Samples:
        """The same images with new labels; the shipped labels stay in ``clean_labels``."""
        labels = np.asarray(labels, dtype=np.int64)
        check_label_range(labels, self.num_classes, origins or self.origins)
        return dataclasses.replace(self, labels=labels, origins=origins or self.origins)


def check_label_range(labels: np.ndarray, num_classes: int, origins: Sequence[str], code_offset: int = 0) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = bad[0]
        raise DataError(
            f"{origins[i]}: label {labels[i] + code_offset} is outside the class range "
            f"{code_offset}..{num_classes - 1 + code_offset}"
            + (f" ({len(bad) - 1} more such rows)" if len(bad) > 1 else "")
        )


def read_text(path: Path) -> str:
    """A label file's text: a byte-order mark (as Windows editors write) dropped, and a file that is not UTF-8 (a
    spreadsheet's Latin-1 or UTF-16 export) or cannot be read is one error naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None


def read_text_lines(path: Path) -> list[tuple[str, str]]:
    """``(origin, line)`` for every non-blank line of a text file, ``origin`` being ``file:line``."""
    text = read_text(path)
    return [(f"{path}:{number}", line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def csv_records(path: Path) -> Iterator[list[str]]:
    """The records of a CSV file, read as :func:`read_text` reads it."""
    return csv.reader(io.StringIO(read_text(path), newline=""))


def check_unique_names(names: Sequence[str], origins: Sequence[str], what: str = "image") -> None:
    """Stop at the first name listed twice, naming both lines: an image must not be counted twice, nor
    trained on with two labels."""
    first: dict[str, str] = {}
    for name, origin in zip(names, origins):
        if name in first:
            raise DataError(
                f"{origin}: lists {what} {name!r} again; {first[name]} already lists it. Each {what} may appear once"
            )
        first[name] = origin


def check_files_exist(samples: Samples, what: str) -> None:
    missing = [i for i, path in enumerate(samples.paths) if not os.path.isfile(path)]
    if missing:
        i = missing[0]
        raise DataError(
            f"{samples.origins[i]}: lists image {samples.paths[i]!r}, which does not exist"
            + (
                f" ({len(missing) - 1} more of the {len(samples)} {what} images are missing)"
                if len(missing) > 1
                else ""
            )
        )


def check_classes_present(samples: Samples, what: str) -> None:
    counts = samples.class_counts()
    empty = [f"{samples.classes[k]!r} (index {k})" for k in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"the {what} split has no images of class {', '.join(empty)}; every one of the "
            f"{samples.num_classes} classes {list(samples.classes)} needs at least one"
        )
