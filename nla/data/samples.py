"""A dataset split as a table of image files and integer labels, and the checks run on it before training."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


class DataError(ValueError):
    """Bad input found while setting up data: one message that names the file, line or value at fault."""


@dataclass
class Samples:
    """One split: image ``paths``, integer ``labels`` in ``0..len(classes)-1``, and provenance.

    ``names`` identify each image the way a label file writes it (e.g. ``train_00001.jpg``), and
    ``origins`` say where each label was read (``file:line``) so errors can point at it.
    ``boxes`` optionally hold a face box ``(x, y, w, h)`` per image.
    """

    paths: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    names: list[str]
    origins: list[str]
    boxes: Optional[np.ndarray] = None
    clean_labels: Optional[np.ndarray] = field(default=None, repr=False)

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
    def flipped(self) -> np.ndarray:
        """Which labels differ from the labels the dataset ships (synthetic or file-given noise)."""
        return self.labels != self.clean_labels

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Samples":
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            names=[self.names[i] for i in idx],
            origins=[self.origins[i] for i in idx],
            boxes=None if self.boxes is None else self.boxes[idx],
            clean_labels=self.clean_labels[idx],
        )

    def relabelled(self, labels: np.ndarray, origins: Optional[list[str]] = None) -> "Samples":
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
            f"{code_offset}..{num_classes - 1 + code_offset}" + (f" ({len(bad) - 1} more such rows)" if len(bad) > 1 else "")
        )


def check_files_exist(samples: Samples, what: str) -> None:
    missing = [i for i, path in enumerate(samples.paths) if not os.path.isfile(path)]
    if missing:
        i = missing[0]
        raise DataError(
            f"{samples.origins[i]}: lists image {samples.paths[i]!r}, which does not exist"
            + (f" ({len(missing) - 1} more of the {len(samples)} {what} images are missing)" if len(missing) > 1 else "")
        )


def check_classes_present(samples: Samples, what: str) -> None:
    counts = samples.class_counts()
    empty = [f"{samples.classes[k]!r} (index {k})" for k in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"the {what} split has no images of class {', '.join(empty)}; every one of the "
            f"{samples.num_classes} classes {list(samples.classes)} needs at least one"
        )
