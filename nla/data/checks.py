"""Checking a split's images before the first step, and building its decode-once cache; checking the trainer's
batch limits against the batches of an epoch.

A long run never dies halfway on a file it could have checked at the start: every listed image is
checked to exist, and decoded when the cache is built or ``check_images`` is ``decode``. Unreadable
images stop the run with the label file and line that lists them, or are dropped and reported with
``skip_unreadable``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np

from nla.data.cache import build_image_cache
from nla.data.files import find_unreadable
from nla.data.samples import DataError, Samples, check_classes_present, check_files_exist

ImageCheck = Literal["decode", "exists"]


@dataclass
class CheckedSplit:
    """A split after its checks: the samples kept, their uint8 cache (when cached) and the images dropped."""

    samples: Samples
    cache: Optional[np.ndarray] = None
    skipped: list[str] = field(default_factory=list)


def check_split(
    samples: Samples,
    split: str,
    check: ImageCheck = "decode",
    skip_unreadable: bool = False,
    cache: bool = False,
    cache_resolution: Optional[int] = None,
    mixed_size_resolution: Optional[int] = None,
    cache_dir: Optional[str] = None,
    workers: int = 1,
) -> CheckedSplit:
    """Check every image of ``samples`` and, with ``cache``, decode them into one uint8 array.

    Images of different sizes are cached at ``cache_resolution``, else at ``mixed_size_resolution``.
    """
    if not skip_unreadable:  # when skipping, a missing file is one more unreadable image
        check_files_exist(samples, split)

    def build(table: Samples) -> tuple[np.ndarray, list[tuple[int, str]]]:
        return build_image_cache(table.paths, table.boxes, cache_resolution, cache_dir, workers, mixed_size_resolution)

    if cache:
        images, failures = build(samples)
    elif check == "decode" or skip_unreadable:
        images, failures = None, find_unreadable(samples.paths, samples.boxes, workers)
    else:
        images, failures = None, []
    if failures and not skip_unreadable:
        index, reason = failures[0]
        more = (
            f" ({len(failures) - 1} more unreadable images; set skip_unreadable: true to drop them)"
            if len(failures) > 1
            else ""
        )
        raise DataError(f"{samples.origins[index]}: {reason}{more}")
    if not failures:
        return CheckedSplit(samples, images)
    bad = {index for index, _ in failures}
    skipped = [samples.paths[i] for i in sorted(bad)]
    samples = samples.subset([i for i in range(len(samples)) if i not in bad])
    if not len(samples):
        raise DataError(f"none of the {len(bad)} {split} images can be read (e.g. {failures[0][1]})")
    if split == "train":
        check_classes_present(samples, split)
    if cache:
        images, _ = build(samples)
    return CheckedSplit(samples, images, skipped)


def check_schedule(trainer: Any, images: int, batch_size: int, drop_last: bool) -> None:
    """The trainer's batch limit and validation interval against the batches an epoch of ``images`` holds:
    Lightning refuses them only once the fit loop starts, after the run folder and the logger exist."""
    per_rank = math.ceil(images / trainer.world_size)
    full = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    limit = trainer.limit_train_batches
    batches = min(full, limit) if isinstance(limit, int) else int(full * limit)
    if batches == 0:
        raise DataError(
            f"--trainer.limit_train_batches {limit} keeps none of the {full} training batches of an epoch "
            f"({per_rank} images, batches of {batch_size}); give a larger fraction or a count of batches"
        )
    interval = trainer.val_check_interval
    validates = trainer.check_val_every_n_epoch is not None and trainer.limit_val_batches > 0
    if isinstance(interval, int) and interval > batches and validates:
        raise DataError(
            f"--trainer.val_check_interval {interval} is more than the {batches} training batches of an epoch; "
            "give at most that many, a fraction of an epoch (e.g. 0.5), or --trainer.check_val_every_n_epoch null "
            "to count batches across epochs"
        )
