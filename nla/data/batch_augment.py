"""Pixels, per batch, on the accelerator: the NLA training augmentation as a few tensor operations.

It mirrors :func:`nla.data.transforms.train_transform` step for step and draws from the same
distributions (a test compares the two), but runs on a whole uint8 batch already on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nla.data.transforms import Augmentation


def to_nchw(images: Tensor) -> Tensor:
    """uint8 N x H x W x C (the cache's layout) as N x C x H x W, a copy that is channels-last in memory."""
    return images.permute(0, 3, 1, 2).clone(memory_format=torch.channels_last)


def _chosen(images: Tensor, p: float, generator: Optional[torch.Generator]) -> Tensor:
    """Which images (N x 1 x 1 x 1, bool) a transform with probability ``p`` applies to: a mask, not indices, so
    that the host never waits for the device to count them."""
    chosen = torch.rand(len(images), device=images.device, generator=generator) < p
    return chosen.view(-1, *([1] * (images.dim() - 1)))


def gaussian_noise_(images: Tensor, variance: float, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """In place on uint8 images: add N(0, variance) per pixel and channel to a share ``p``, rounding and clipping."""
    chosen = _chosen(images, p, generator)
    noise = torch.randn(images.shape, device=images.device, generator=generator)
    noisy = (images.float() + noise * math.sqrt(variance)).round_().clamp_(0, 255).to(torch.uint8)
    return images.copy_(torch.where(chosen, noisy, images))


def normalisation(
    mean: Sequence[float], std: Sequence[float], device: Optional[torch.device] = None
) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``x * scale + shift == (x / 255 - mean) / std``, shaped 1 x C x 1 x 1; made once per
    device and statistics, since copying them to a device every batch would make the host wait for it."""
    return _normalisation(tuple(float(m) for m in mean), tuple(float(s) for s in std), torch.device(device or "cpu"))


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1.0 / (std_t * 255.0)).to(device), (-mean_t / std_t).to(device)


def new_input(shape: Sequence[int], device: torch.device) -> Tensor:
    """An uninitialised float32 tensor of ``shape`` (N x C x H x W), channels-last like the backbone's input."""
    return torch.empty(tuple(shape), device=device, memory_format=torch.channels_last)


def resize_normalize(
    images: Tensor, size: int, mean: Sequence[float], std: Sequence[float], out: Optional[Tensor] = None
) -> Tensor:
    """uint8 N x C x H x W to float: (x / 255 - mean) / std, then a bilinear resize with half-pixel centres
    and no antialiasing (OpenCV's INTER_LINEAR), into ``out`` if given. Normalising first is exact:
    bilinear weights sum to one."""
    scale, shift = normalisation(mean, std, images.device)
    x = torch.addcmul(shift, images.float(), scale)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.contiguous(memory_format=torch.channels_last) if out is None else out.copy_(x)


def random_hflip_(images: Tensor, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """In place: mirror a share ``p`` of the images left to right."""
    return images.copy_(torch.where(_chosen(images, p, generator), images.flip(-1), images))


def erasing_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    device: torch.device,
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


def fill_boxes_(images: Tensor, boxes: Tensor, chosen: Tensor, value: float) -> Tensor:
    """Fill box i of every chosen image i through one full-size mask, with no host sync."""
    _, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None]) & chosen[:, None]  # N x H
    in_cols = (cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None])  # N x W
    return images.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], value)


def random_erasing_(images: Tensor, augmentation: Augmentation, generator: Optional[torch.Generator] = None) -> Tensor:
    """In place: fill one random box per chosen image with ``erasing_value``, on all channels."""
    n, _, height, width = images.shape
    chosen = torch.rand(n, device=images.device, generator=generator) < augmentation.erasing_p
    boxes = erasing_boxes(
        n, height, width, augmentation.erasing_scale, augmentation.erasing_ratio, images.device, generator
    )
    return fill_boxes_(images, boxes, chosen, augmentation.erasing_value)


def batch_train_augment(
    images: Tensor,
    augmentation: Augmentation,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """uint8 N x H x W x C in; 2N x C x size x size float out: the augmented views, then their exact mirrors
    (erased patch included). That is the model's input for its one forward pass, channels-last.

    The recipe's order is noise, resize, normalise, flip, erase. Bilinear resizing is mirror-symmetric,
    so the flip runs first, on the uint8 images at the cache's native resolution, where it touches
    fewer pixels; the result is the same.
    """
    n = len(images)
    x = to_nchw(images)
    if augmentation.noise_p > 0 and augmentation.noise_variance > 0:
        gaussian_noise_(x, augmentation.noise_variance, augmentation.noise_p, generator)
    random_hflip_(x, augmentation.flip_p, generator)
    out = new_input((2 * n, x.shape[1], size, size), x.device)
    views = resize_normalize(x, size, mean, std, out[:n])
    if augmentation.erasing_p > 0:
        random_erasing_(views, augmentation, generator)
    out[n:].copy_(views.flip(-1))
    return out


def batch_eval_transform(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 N x H x W x C in; resized and normalised out, as :func:`nla.data.transforms.eval_transform`."""
    return resize_normalize(images.permute(0, 3, 1, 2), size, mean, std)
