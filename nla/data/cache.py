"""Decode a split once into one compact uint8 array (N x H x W x 3), kept in memory or in a cache file.

The fast path gathers batches from this array and augments them on the accelerator, so no image
is decoded twice. A cache file is keyed by the files' names, sizes and times, the face boxes and
the resolution, so a changed dataset never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from nla.data.files import load_image
from nla.data.samples import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    """The decode-once cache of the ``cached`` pipeline.

    Args:
        dir: Keep the decoded cache (and measured statistics) in files here, to reuse across runs.
        resolution: Resize images to this side when caching; ``None`` keeps the native size when all images share
            it, and caches images of different sizes at the input size.
        max_gb: The ``auto`` pipeline uses the cache only below this size.
    """

    dir: Optional[str] = None
    resolution: Optional[int] = None
    max_gb: float = 16.0

    def __post_init__(self) -> None:
        if self.resolution is not None and self.resolution < 1:
            raise DataError(f"cache resolution {self.resolution} must be at least 1 pixel")
        if not self.max_gb >= 0:
            raise DataError(f"cache max_gb {self.max_gb} must be >= 0")


def cache_key(paths: list[str], boxes: Optional[np.ndarray], resolution: Optional[int]) -> str:
    digest = hashlib.sha1(f"nla-cache-v1 {resolution}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if boxes is not None:
        digest.update(np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
    return digest.hexdigest()[:20]


def decode_into(
    paths: list[str], boxes: Optional[np.ndarray], resolution: Optional[int], out_factory, workers: int = 8
) -> tuple[np.ndarray, list[tuple[int, str]], bool]:
    """Decode every image into an array made by ``out_factory(shape)``.

    Returns the array, the ``(index, reason)`` of every image that could not be decoded, and whether
    ``resolution=None`` (keep the native size) met images of different sizes, in which case the array
    is not usable and the caller caches at one resolution instead.
    """
    first = next((i for i in range(len(paths)) if _try_load(paths[i], boxes, i) is not None), None)
    if first is None:
        return out_factory((0, 1, 1, 3)), [(i, f"cannot decode image {p!r}") for i, p in enumerate(paths)], False
    first_image = _try_load(paths[first], boxes, first)
    assert first_image is not None
    height, width = (resolution, resolution) if resolution else first_image.shape[:2]
    out = out_factory((len(paths), height, width, 3))
    failures: list[tuple[int, str]] = []
    mixed = False

    def fill(i: int) -> None:
        nonlocal mixed
        try:
            image = load_image(paths[i], None if boxes is None else boxes[i])
        except DataError as error:
            failures.append((i, str(error)))
            return
        if image.shape[:2] != (height, width):
            if resolution is None:
                mixed = True
                return
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = image

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fill, range(len(paths))))
    return out, sorted(failures), mixed


def _try_load(path: str, boxes: Optional[np.ndarray], i: int) -> Optional[np.ndarray]:
    try:
        return load_image(path, None if boxes is None else boxes[i])
    except DataError:
        return None


def build_image_cache(
    paths: list[str],
    boxes: Optional[np.ndarray] = None,
    resolution: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
    workers: int = 8,
    mixed_size_resolution: Optional[int] = None,
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The uint8 cache of ``paths``, and the (index, reason) of every image that could not be decoded.

    Where any image fails, the array is not usable: drop those images and build again. With
    ``resolution=None`` images keep their native size when they all share it; images of different sizes
    are cached at ``mixed_size_resolution`` (square), or reported as such when it is not given.

    With ``cache_dir`` the array is written once to ``<cache_dir>/<key>.npy`` and later memory-mapped.
    """
    array, failures, mixed = _build(paths, boxes, resolution, cache_dir, workers)
    if mixed:
        if mixed_size_resolution is None:
            raise DataError(
                f"the images have different sizes (e.g. {paths[0]!r}); set --data.cache.resolution "
                "to cache them at one size"
            )
        log.info("images of different sizes: caching them at %dx%d", mixed_size_resolution, mixed_size_resolution)
        array, failures, _ = _build(paths, boxes, mixed_size_resolution, cache_dir, workers)
    return array, failures


def _build(
    paths: list[str],
    boxes: Optional[np.ndarray],
    resolution: Optional[int],
    cache_dir: Optional[str | Path],
    workers: int,
) -> tuple[np.ndarray, list[tuple[int, str]], bool]:
    if cache_dir is None:
        return decode_into(paths, boxes, resolution, lambda shape: np.zeros(shape, dtype=np.uint8), workers)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{cache_key(paths, boxes, resolution)}.npy"
    if target.is_file():
        log.info("reading image cache %s", target)
        return np.load(target, mmap_mode="c"), [], False
    partial = target.with_suffix(f".{os.getpid()}.partial")
    array: Any
    array, failures, mixed = decode_into(
        paths,
        boxes,
        resolution,
        lambda shape: np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape),
        workers,
    )
    array.flush()
    del array
    if failures or mixed:  # a cache with holes is never kept; the caller reports or drops these images
        partial.unlink()
        return np.zeros((0, 1, 1, 3), dtype=np.uint8), failures, mixed
    os.replace(partial, target)
    log.info("wrote image cache %s", target)
    return np.load(target, mmap_mode="c"), [], False


def estimated_cache_gb(samples: Any, side: Optional[int]) -> float:
    """The size of a split's cache: at ``side`` x ``side``, or at the size of its first image that can be read
    (``None``; the split's checks report those that cannot, or drop them)."""
    if side is None:
        for index, path in enumerate(samples.paths):
            try:
                first = load_image(path, None if samples.boxes is None else samples.boxes[index])
                break
            except DataError:
                continue
        else:
            return 0.0
        pixels = first.shape[0] * first.shape[1]
    else:
        pixels = side * side
    return len(samples) * pixels * 3 / 1e9
