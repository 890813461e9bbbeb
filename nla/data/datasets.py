"""torch ``Dataset``s over a :class:`~nla.data.samples.Samples` table: decoded per sample, or gathered from a cache."""

from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from nla.batch import FaceBatch
from nla.data.files import load_image
from nla.data.samples import DataError, Samples
from nla.data.transforms import mirror_view


class _SeededTransform:
    """An albumentations pipeline reseeded from ``torch.initial_seed()`` in each process that uses it.

    Lightning's ``seed_everything(workers=True)`` makes that seed depend on the run's seed, the
    worker and the epoch, so the augmentation stream is reproducible and differs per worker.
    """

    def __init__(self, transform: A.Compose) -> None:
        self.transform = transform
        self._seed: Optional[int] = None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        seed = torch.initial_seed() % 2**32
        if seed != self._seed:
            self.transform.set_random_seed(seed)
            self._seed = seed
        return self.transform(image=image)["image"]


class FERImageDataset(Dataset):
    """Decodes each image when asked and applies a per-sample transform.

    Items are dicts with ``image``, ``label``, ``index``, ``error`` and, with ``two_views``, ``mirror``, the exact
    mirror of the augmented image (:func:`nla.batch.collate_faces` makes a batch of them). An image that cannot be
    decoded (one that changed after the checks before training) gives a blank image and ``error`` naming its label
    file and line; the DataModule stops the run with it in the main process, as one line.
    """

    def __init__(self, samples: Samples, transform: A.Compose, image_size: int, two_views: bool = False) -> None:
        self.samples = samples
        self.transform = _SeededTransform(transform)
        self.image_size = image_size
        self.two_views = two_views

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        box = None if self.samples.boxes is None else self.samples.boxes[index]
        error = ""
        try:
            image = self.transform(load_image(self.samples.paths[index], box))
        except DataError as failure:
            image, error = torch.zeros(3, self.image_size, self.image_size), f"{self.samples.origins[index]}: {failure}"
        item = {"image": image, "label": int(self.samples.labels[index]), "index": index, "error": error}
        if self.two_views:
            item["mirror"] = mirror_view(image)
        return item


class CachedImageDataset(Dataset):
    """Indices into a uint8 cache (N x H x W x 3); :meth:`collate` gathers a whole batch in one indexing operation.

    ``image`` stays uint8 and is augmented after it reaches the device. Being an ordinary map-style
    dataset with an ordinary sampler, it is split across processes like any other under DDP.
    """

    def __init__(self, samples: Samples, cache: np.ndarray) -> None:
        if len(cache) != len(samples):
            raise ValueError(f"cache holds {len(cache)} images but the split has {len(samples)}")
        self.samples = samples
        self.images = torch.from_numpy(cache)
        self.labels = torch.from_numpy(samples.labels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> FaceBatch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return FaceBatch(self.images[index], self.labels[index], index)
