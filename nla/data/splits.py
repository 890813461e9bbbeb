"""Making a validation split where a dataset ships none: a seeded, stratified hold-out or k-fold split.

CK+-style datasets are one folder per class with no split. ``holdout`` keeps a share of every class
for validation; ``fold`` does k-fold cross-validation, as CK+ papers report. With a ``group_pattern``
(a regular expression over file names, e.g. the subject ``S(\\d+)_`` of CK+), all images of a group fall
on the same side, so no subject is both trained and tested on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Optional

import numpy as np

from nla.data.samples import DataError, Samples


@dataclass(frozen=True)
class HoldOut:
    """Which part of a split is held out for validation; none while neither ``val_fraction`` nor ``num_folds`` is
    set (a folder without splits then holds out 20%).

    Args:
        val_fraction: Share of each class held out (when ``num_folds`` is not set).
        num_folds: Split into this many stratified folds and hold out fold ``fold``.
        fold: The held-out fold, 0-based.
        group_pattern: A regular expression searched in each image's file name; images with the same match
            (its first group, if it has one) stay together. Every file name must match.
        seed: Seed of the split.
    """

    val_fraction: Optional[float] = None
    num_folds: Optional[int] = None
    fold: int = 0
    group_pattern: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_folds is not None and self.val_fraction is not None:
            raise DataError(
                f"holdout num_folds {self.num_folds} and val_fraction {self.val_fraction}: a fold is held out, or a "
                "share; give one of them"
            )
        if self.num_folds is None and self.fold != 0:
            raise DataError(f"holdout fold {self.fold} is a fold of num_folds; give --data.holdout.num_folds too")
        if self.num_folds is not None:
            if self.num_folds < 2:
                raise DataError(f"num_folds {self.num_folds} must be at least 2")
            if not 0 <= self.fold < self.num_folds:
                raise DataError(f"fold {self.fold} is outside 0..{self.num_folds - 1} for num_folds {self.num_folds}")
        elif self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction {self.val_fraction} must lie strictly between 0 and 1 (e.g. 0.2)")
        if self.group_pattern is not None:
            try:
                re.compile(self.group_pattern)
            except re.error as error:
                raise DataError(f"group_pattern {self.group_pattern!r} is not a regular expression: {error}") from None

    @property
    def active(self) -> bool:
        return self.val_fraction is not None or self.num_folds is not None

    def describe(self) -> str:
        how = f"fold {self.fold} of {self.num_folds}" if self.num_folds else f"{self.val_fraction:.0%} hold-out"
        return how + (f", grouped by {self.group_pattern!r}" if self.group_pattern else "") + f", seed {self.seed}"

    def groups(self, samples: Samples) -> np.ndarray:
        """One integer group per image: its own, or the ``group_pattern`` match of its file name."""
        if self.group_pattern is None:
            return np.arange(len(samples))
        pattern, keys = re.compile(self.group_pattern), []
        for name, origin in zip(samples.names, samples.origins):
            found = pattern.search(PurePath(name).name)
            if found is None:
                raise DataError(
                    f"{origin}: file name {PurePath(name).name!r} does not match group_pattern "
                    f"{self.group_pattern!r}; every image needs a group"
                )
            keys.append(found.group(1) if pattern.groups else found.group(0))
        return np.unique(np.asarray(keys), return_inverse=True)[1]

    def split(self, samples: Samples) -> tuple[np.ndarray, np.ndarray]:
        """``(train_indices, held_out_indices)``, each sorted."""
        parts = self.num_folds or 2
        fraction = float(self.val_fraction or 0.0)
        shares = np.full(parts, 1.0 / parts) if self.num_folds else np.array([1.0 - fraction, fraction])
        held = self.fold if self.num_folds else 1
        assignment = assign_groups(samples.labels, self.groups(samples), shares, samples.num_classes, self.seed)
        out = assignment == held
        if not out.any() or out.all():
            raise DataError(
                f"the {self.describe()} leaves {'no' if not out.any() else 'every'} image for validation "
                f"among {len(samples)}; change val_fraction or num_folds"
            )
        return np.flatnonzero(~out), np.flatnonzero(out)


def assign_groups(
    labels: np.ndarray, groups: np.ndarray, shares: np.ndarray, num_classes: int, seed: int
) -> np.ndarray:
    """A part index per sample: whole groups are placed, largest first (ties in seeded random order), in the
    part whose per-class counts fall furthest below their target share of each class."""
    rng = np.random.default_rng(seed)
    group_ids = np.unique(groups)
    counts = np.zeros((len(group_ids), num_classes))
    np.add.at(counts, (np.searchsorted(group_ids, groups), labels), 1)
    target = shares[:, None] * counts.sum(axis=0)[None, :]
    filled = np.zeros_like(target)
    order = sorted(rng.permutation(len(group_ids)), key=lambda g: -counts[g].sum())
    part_of_group = np.empty(len(group_ids), dtype=np.int64)
    for g in order:
        # Room left for this group's classes in each part, relative to the part's target.
        deficit = ((target - filled) * (counts[g] > 0)).sum(axis=1) / np.maximum(target.sum(axis=1), 1)
        part = int(np.argmax(deficit))
        part_of_group[g] = part
        filled[part] += counts[g]
    return part_of_group[np.searchsorted(group_ids, groups)]
