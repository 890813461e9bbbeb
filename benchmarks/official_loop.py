"""The data side of a training loop written the way the authors' code trains (benchmarks/throughput.py's reference):
per-sample cv2 decode, numpy noise and PIL/torchvision transforms in DataLoader workers."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from nla.data import read_rafdb
from nla.data.sources.rafdb import MEAN, STD


class OfficialStyleDataset(Dataset):
    """Per-sample decode and transforms as the authors' code does them: cv2, numpy noise, PIL + torchvision."""

    def __init__(self, paths: list[str], labels: np.ndarray, image_size: int) -> None:
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose(
            [
                transforms.ToPILImage(),
                transforms.Resize((image_size, image_size)),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
                transforms.RandomHorizontalFlip(),
                transforms.RandomErasing(scale=(0.02, 0.3)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = cv2.imread(self.paths[index])[:, :, ::-1]
        if random.random() < 0.5:
            noisy = image.astype(np.float32) + np.random.normal(0.0, np.sqrt(30.0), image.shape)
            image = np.clip(noisy, 0, 255).astype(np.uint8)
        return self.transform(np.ascontiguousarray(image)), int(self.labels[index])


def reference_loader(args, root: Path, persistent_workers: bool = True) -> DataLoader:
    """RAF-DB's training split through :class:`OfficialStyleDataset` (``args``: batch_size, image_size, workers)."""
    train = read_rafdb(root, "train")
    dataset = OfficialStyleDataset(train.paths, train.labels, args.image_size)
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=persistent_workers and args.workers > 0,
    )


def endless(loader: DataLoader):
    while True:
        yield from loader
