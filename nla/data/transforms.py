"""Pixels, per sample: the training augmentation of the NLA recipe with albumentations, and evaluation.

The batched twin that runs on the accelerator is :mod:`nla.data.batch_augment`; both read the
same :class:`Augmentation` settings and draw from the same distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch

from nla.errors import ConfigError


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation of the NLA recipe, applied in this order (see ``docs/method.md``): Gaussian
    pixel noise on the uint8 image, resize and normalise, horizontal flip, random erasing.

    Args:
        noise_variance: Variance of the Gaussian noise added to each pixel and channel of the uint8 image (30).
        noise_p: Probability that an image gets the noise (0.5).
        flip_p: Probability of a horizontal flip (0.5).
        erasing_p: Probability that an image gets one erased box (0.5).
        erasing_scale: Range of the box's area as a share of the image (0.02 to 0.3).
        erasing_ratio: Range of the box's aspect ratio, height over width (0.3 to 3.3).
        erasing_value: Value the box is filled with after normalising; 0 is the mean colour.
    """

    noise_variance: float = 30.0
    noise_p: float = 0.5
    flip_p: float = 0.5
    erasing_p: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.3)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    erasing_value: float = 0.0

    def __post_init__(self) -> None:
        for name in ("noise_p", "flip_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augmentation {name}={getattr(self, name)} is not a probability in [0, 1]")
        low, high = self.erasing_scale
        if not 0.0 < low <= high < 1.0:
            raise ConfigError(f"augmentation erasing_scale {self.erasing_scale} must satisfy 0 < low <= high < 1")
        if self.noise_variance < 0:
            raise ConfigError(f"augmentation noise_variance {self.noise_variance} must be >= 0")


class GaussianPixelNoise(A.ImageOnlyTransform):
    """Add N(0, variance) to every pixel and channel of a uint8 image, rounding and clipping to 0..255.

    albumentations' own ``GaussNoise`` truncates the noise toward zero before adding it to uint8
    images, which realises a variance of about 26.9 where 30 is asked for.
    """

    def __init__(self, variance: float = 30.0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.variance = variance

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        shape = data["image"].shape
        return {"noise": self.random_generator.normal(0.0, math.sqrt(self.variance), size=shape).astype(np.float32)}

    def apply(self, img: np.ndarray, noise: np.ndarray, **params) -> np.ndarray:
        return np.clip(np.rint(img.astype(np.float32) + noise), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("variance",)


def train_transform(augmentation: Augmentation, image_size: int, mean, std) -> A.Compose:
    """Per-sample training transform: uint8 H x W x 3 in, normalised float tensor 3 x S x S out."""
    return A.Compose(
        [
            GaussianPixelNoise(augmentation.noise_variance, p=augmentation.noise_p),
            A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            A.HorizontalFlip(p=augmentation.flip_p),
            A.Erasing(
                scale=augmentation.erasing_scale,
                ratio=augmentation.erasing_ratio,
                fill=augmentation.erasing_value,
                p=augmentation.erasing_p,
            ),
            A.ToTensorV2(),
        ]
    )


def eval_transform(image_size: int, mean, std) -> A.Compose:
    """Evaluation: resize and normalise only."""
    return A.Compose(
        [
            A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            A.ToTensorV2(),
        ]
    )


def mirror_view(image: torch.Tensor) -> torch.Tensor:
    """The second view of NLA: the exact horizontal mirror of the already augmented image."""
    return image.flip(-1)
