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


def cpu_path(images: Tensor) -> bool:
    """Whether ``images`` take the CPU's variant of each step (uint8 resize, box-by-box erasing, mirroring in
    slices) or the accelerator's (float resize, one erasing mask, one mirror copy): the two differ only in speed."""
    return images.device.type == "cpu"


def to_nchw(images: Tensor) -> Tensor:
    """uint8 N x H x W x C (the cache's layout) as N x C x H x W, a copy that is channels-last in memory."""
    return images.permute(0, 3, 1, 2).clone(memory_format=torch.channels_last)


def _chosen(n: int, p: float, device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """Indices of the images a transform with probability ``p`` applies to."""
    return torch.nonzero(torch.rand(n, device=device, generator=generator) < p).squeeze(1)


def gaussian_noise_(images: Tensor, variance: float, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """In place on uint8 images: add N(0, variance) per pixel and channel to a share ``p``, rounding and clipping."""
    chosen = _chosen(len(images), p, images.device, generator)
    noise = torch.randn((len(chosen), *images.shape[1:]), device=images.device, generator=generator)
    noisy = (images[chosen].float() + noise * math.sqrt(variance)).round_().clamp_(0, 255)
    images[chosen] = noisy.to(torch.uint8)
    return images


def normalisation(mean: Sequence[float], std: Sequence[float], device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``x * scale + shift == (x / 255 - mean) / std``, shaped 1 x C x 1 x 1."""
    mean_t = torch.as_tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return 1.0 / (std_t * 255.0), -mean_t / std_t


def new_input(shape: Sequence[int], device: torch.device) -> Tensor:
    """An uninitialised float32 tensor of ``shape`` (N x C x H x W), channels-last like the backbone's input."""
    return torch.empty(tuple(shape), device=device, memory_format=torch.channels_last)


def resize_normalize_uint8(
    images: Tensor, size: int, mean: Sequence[float], std: Sequence[float], out: Optional[Tensor] = None
) -> Tensor:
    """Resize the uint8 images (torch vectorises it, and it rounds as OpenCV does), then convert and
    normalise them in one pass into the output. The CPU's path."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    scale, shift = normalisation(mean, std, images.device)
    if out is None:
        out = new_input((*images.shape[:2], size, size), images.device)
    return torch.addcmul(shift, images, scale, out=out)


def resize_normalize_float(
    images: Tensor, size: int, mean: Sequence[float], std: Sequence[float], out: Optional[Tensor] = None
) -> Tensor:
    """Normalise to float first, then resize (the two commute: bilinear weights sum to one). The
    accelerator's path."""
    scale, shift = normalisation(mean, std, images.device)
    x = torch.addcmul(shift, images.float(), scale)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if out is None else out.copy_(x)


def resize_normalize(
    images: Tensor, size: int, mean: Sequence[float], std: Sequence[float], out: Optional[Tensor] = None
) -> Tensor:
    """uint8 N x C x H x W to float: bilinear resize with half-pixel centres (OpenCV's INTER_LINEAR), then
    (x / 255 - mean) / std, by whichever path is fastest on the images' device, into ``out`` if given."""
    path = resize_normalize_uint8 if cpu_path(images) else resize_normalize_float
    return path(images, size, mean, std, out)


def random_hflip_(images: Tensor, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    chosen = _chosen(len(images), p, images.device, generator)
    images[chosen] = images[chosen].flip(-1)
    return images


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


def fill_boxes_mask_(images: Tensor, boxes: Tensor, chosen: Tensor, value: float) -> Tensor:
    """Fill box i of every chosen image i through one full-size mask: no host sync, best on an accelerator."""
    _, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + h)[:, None]) & chosen[:, None]  # N x H
    in_cols = (cols[None] >= left[:, None]) & (cols[None] < (left + w)[:, None])  # N x W
    return images.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], value)


def fill_boxes_slices_(images: Tensor, boxes: Tensor, chosen: Tensor, value: float) -> Tensor:
    """Fill box i of every chosen image i slice by slice: touches only the boxes, best on the CPU."""
    for i, (top, left, h, w) in zip(chosen.nonzero().squeeze(1).tolist(), boxes[chosen].tolist()):
        images[i, :, top:top + h, left:left + w] = value
    return images


def random_erasing_(images: Tensor, augmentation: Augmentation, generator: Optional[torch.Generator] = None) -> Tensor:
    """In place: fill one random box per chosen image with ``erasing_value``, on all channels."""
    n, _, height, width = images.shape
    chosen = torch.rand(n, device=images.device, generator=generator) < augmentation.erasing_p
    boxes = erasing_boxes(n, height, width, augmentation.erasing_scale, augmentation.erasing_ratio, images.device, generator)
    fill = fill_boxes_slices_ if cpu_path(images) else fill_boxes_mask_
    return fill(images, boxes, chosen, augmentation.erasing_value)


def batch_train_augment(
    images: Tensor,
    augmentation: Augmentation,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    generator: Optional[torch.Generator] = None,
    out: Optional[Tensor] = None,
) -> Tensor:
    """uint8 N x H x W x C in; 2N x C x size x size float out: the augmented views, then their exact mirrors
    (erased patch included). That is the model's input for its one forward pass, channels-last.

    The recipe's order is noise, resize, normalise, flip, erase. Bilinear resizing is mirror-symmetric,
    so the flip runs first, on the uint8 images at the cache's native resolution, where it touches
    fewer pixels; the result is the same.

    Args:
        out: A float32 2N x C x size x size tensor to write into (see :class:`ReusableBuffer`), else a new one.
    """
    n = len(images)
    x = to_nchw(images)
    if augmentation.noise_p > 0 and augmentation.noise_variance > 0:
        gaussian_noise_(x, augmentation.noise_variance, augmentation.noise_p, generator)
    random_hflip_(x, augmentation.flip_p, generator)
    if out is None:
        out = new_input((2 * n, x.shape[1], size, size), x.device)
    views = resize_normalize(x, size, mean, std, out[:n])
    if augmentation.erasing_p > 0:
        random_erasing_(views, augmentation, generator)
    mirror_into_(out[n:], views)
    return out


def mirror_into_(out: Tensor, images: Tensor) -> Tensor:
    """``out`` = ``images`` flipped left-right. On the CPU, a few images at a time: the allocator reuses a
    temporary of a couple of MB, where one of the whole batch would be new memory, page faults included,
    every batch."""
    step = len(images)
    if cpu_path(images):
        step = max(1, (2 << 20) // (images[0].numel() * images.element_size()))
    for i in range(0, len(images), step):
        out[i:i + step].copy_(images[i:i + step].flip(-1))
    return out


class ReusableBuffer:
    """One output tensor, handed out again for the next batch once nothing else holds it.

    A fresh 2 x 32 x 3 x 224 x 224 float batch is 38 MB, and on the CPU each new one costs the page
    faults of touching 38 MB of new memory, about as much as the whole augmentation. Reuse is decided
    by the storage's reference count, so a batch that anyone still holds (a callback, autograd's saved
    tensors) is never overwritten; where that count is not available, every batch is new.
    """

    def __init__(self) -> None:
        self.tensor: Optional[Tensor] = None

    def get(self, shape: Sequence[int], device: torch.device) -> Tensor:
        held = self.tensor
        if held is None or tuple(held.shape) != tuple(shape) or held.device != device or self.in_use(held):
            held = self.tensor = new_input(shape, device)
        # A new tensor over the same memory, so that whoever holds it counts as a user of that memory.
        return held.detach()

    @staticmethod
    def in_use(tensor: Tensor) -> bool:
        """Whether any tensor besides ``tensor`` shares its memory: the one handed out, views of it, tensors
        autograd saved."""
        use_count = getattr(torch._C, "_storage_Use_Count", None)
        if use_count is None:
            return True
        # One reference is ``tensor`` itself, one the storage object made to ask.
        return use_count(tensor.untyped_storage()._cdata) > 2


def batch_eval_transform(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 N x H x W x C in; resized and normalised out, as :func:`nla.data.transforms.eval_transform`."""
    return resize_normalize(images.permute(0, 3, 1, 2), size, mean, std)
