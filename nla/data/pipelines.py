"""Batching: the DataLoaders and samplers of the two pixel pipelines.

- ``cached``: indices into a uint8 cache, gathered a whole batch at a time in the main process; the
  augmentation then runs on the batch on the device (:mod:`nla.data.batch_augment`).
- ``albumentations``: each sample decoded and augmented in DataLoader workers (:mod:`nla.data.transforms`),
  for custom augmentations and datasets too big to cache.

``nla predict`` reads photos and videos through :func:`media_loader`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sized
from typing import Optional

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from nla.batch import collate_faces, collate_media
from nla.data.datasets import CachedImageDataset
from nla.data.samples import Samples


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which a cluster's allotment sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class UnpaddedDistributedSampler(DistributedSampler):
    """Every ``num_replicas``-th index from ``rank``, in order, with no padding: each image is evaluated by
    exactly one process, so metrics synced over processes equal one process's. (A ``DistributedSampler``, so
    that Lightning does not shard it again.)"""

    def __init__(self, data: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(data, num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.indices = list(range(rank, len(data), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_sampler(samples: Samples, balanced: bool = False) -> Sampler[int]:
    """Shuffled; with ``balanced``, drawn with probability inversely proportional to class size."""
    if not balanced:
        return RandomSampler(samples.labels)
    counts = np.bincount(samples.labels, minlength=samples.num_classes).astype(np.float64)
    weights = 1.0 / counts[samples.labels]
    return WeightedRandomSampler(weights.tolist(), num_samples=len(samples), replacement=True)


def eval_sampler(samples: Samples, world_size: int = 1, rank: int = 0) -> Sampler[int]:
    if world_size > 1:
        return UnpaddedDistributedSampler(samples.labels, world_size, rank)
    return SequentialSampler(samples.labels)


def decoding_loader(
    dataset: Dataset, batch_size: int, sampler: Sampler[int], workers: int, drop_last: bool = False
) -> DataLoader:
    """Per-sample decoding and transforms in ``workers`` processes (or the main process with 0)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        collate_fn=collate_faces,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def cached_loader(
    samples: Samples,
    cache: np.ndarray,
    batch_size: int,
    sampler: Sampler[int],
    drop_last: bool = False,
    pin_memory: Optional[bool] = None,
) -> DataLoader:
    """Batches of uint8 images gathered from the cache in the main process, augmented once on the device."""
    # Gathering from memory needs no workers, so Lightning's advice to add some does not apply here.
    warnings.filterwarnings("ignore", message=r"The '\w+_dataloader' does not have many workers", module=r"lightning\.")
    dataset = CachedImageDataset(samples, cache)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=dataset.collate,
        num_workers=0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )


def media_loader(media: IterableDataset, batch_size: int, workers: int) -> DataLoader:
    """Batches of :class:`~nla.data.prediction.PredictionMedia`: each worker reads, detects and crops its own files."""
    return DataLoader(
        media,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_media,
        pin_memory=torch.cuda.is_available(),
    )
