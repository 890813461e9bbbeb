"""Pixels, per batch, on the accelerator: the NLA training augmentation as a few tensor operations.

It mirrors :func:`nla.data.transforms.train_transform` step for step and draws from the same
distributions (a test compares the two), but runs on a whole uint8 batch already on the device.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nla.data.transforms import Augmentation


def to_float_nchw(images: Tensor) -> Tensor:
    """uint8 N x H x W x C (the cache's layout) to float N x C x H x W in 0..255."""
    return images.permute(0, 3, 1, 2).float()


def _coin(n: int, p: float, device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def gaussian_noise(images: Tensor, variance: float, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Add N(0, variance) per pixel and channel to a share ``p`` of the images, rounding and clipping to 0..255."""
    apply = _coin(len(images), p, images.device, generator)[:, None, None, None]
    noise = torch.randn(images.shape, device=images.device, generator=generator) * math.sqrt(variance)
    return torch.where(apply, (images + noise).round_().clamp_(0, 255), images)


def resize_normalize(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Bilinear resize (OpenCV's INTER_LINEAR, half-pixel centres) of 0..255 images, then (x/255 - mean) / std."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    mean_t = torch.as_tensor(mean, device=images.device, dtype=images.dtype)[None, :, None, None] * 255.0
    std_t = torch.as_tensor(std, device=images.device, dtype=images.dtype)[None, :, None, None] * 255.0
    return (images - mean_t) / std_t


def random_hflip(images: Tensor, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    apply = _coin(len(images), p, images.device, generator)[:, None, None, None]
    return torch.where(apply, images.flip(-1), images)


def erasing_boxes(
    n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float], device: torch.device,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``n`` boxes (top, left, h, w) drawn as albumentations' ``Erasing`` draws one.

    Area uniform in [scale_lo, min(scale_hi, fits)] * H * W; aspect ratio uniform in the range that
    fits the image for that area; position uniform.
    """
    total = height * width
    min_area, max_area = total * scale[0], total * scale[1]
    r_min, r_max = ratio
    max_valid = min(max_area, r_min * height * height, width * width / r_max)
    if max_valid < min_area:
        return torch.zeros(n, 4, dtype=torch.long, device=device)
    u = torch.rand(n, 4, device=device, generator=generator, dtype=torch.float64)
    area = min_area + u[:, 0] * (max_valid - min_area)
    low_r = torch.clamp(area / (height * height), min=r_min)
    high_r = torch.clamp(width * width / area, max=r_max)
    r = low_r + u[:, 1] * (high_r - low_r)
    h = torch.round(torch.sqrt(area / r)).clamp(1, height)
    w = torch.round(torch.sqrt(area * r)).clamp(1, width)
    top = torch.floor(u[:, 2] * (height - h + 1))
    left = torch.floor(u[:, 3] * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1).long()


def random_erasing(images: Tensor, augmentation: Augmentation, generator: Optional[torch.Generator] = None) -> Tensor:
    n, _, height, width = images.shape
    apply = _coin(n, augmentation.erasing_p, images.device, generator)
    top, left, h, w = erasing_boxes(
        n, height, width, augmentation.erasing_scale, augmentation.erasing_ratio, images.device, generator
    ).unbind(1)
    rows = torch.arange(height, device=images.device)[None, :, None]
    cols = torch.arange(width, device=images.device)[None, None, :]
    inside = (
        (rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
        & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None])
        & apply[:, None, None]
    )
    return images.masked_fill(inside[:, None], augmentation.erasing_value)


def batch_train_augment(
    images: Tensor,
    augmentation: Augmentation,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """uint8 N x H x W x C in; the augmented view and its exact mirror (erased patch included) out."""
    x = to_float_nchw(images)
    if augmentation.noise_p > 0 and augmentation.noise_variance > 0:
        x = gaussian_noise(x, augmentation.noise_variance, augmentation.noise_p, generator)
    x = resize_normalize(x, size, mean, std)
    x = random_hflip(x, augmentation.flip_p, generator)
    x = random_erasing(x, augmentation, generator)
    x = x.contiguous(memory_format=torch.channels_last)
    return x, x.flip(-1)


def batch_eval_transform(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 N x H x W x C in; resized and normalised out, as :func:`nla.data.transforms.eval_transform`."""
    return resize_normalize(to_float_nchw(images), size, mean, std).contiguous(memory_format=torch.channels_last)
