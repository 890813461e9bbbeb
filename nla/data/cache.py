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
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from nla.data.images import load_image
from nla.data.samples import DataError

log = logging.getLogger(__name__)


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
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode every image into an array made by ``out_factory(shape)``; returns it and the (index, reason) failures.

    ``resolution=None`` keeps the native size, which must then be the same for every image.
    """
    first = next((i for i in range(len(paths)) if _try_load(paths[i], boxes, i) is not None), None)
    if first is None:
        return out_factory((0, 1, 1, 3)), [(i, f"cannot decode image {p!r}") for i, p in enumerate(paths)]
    height, width = (resolution, resolution) if resolution else _try_load(paths[first], boxes, first).shape[:2]
    out = out_factory((len(paths), height, width, 3))
    failures: list[tuple[int, str]] = []

    def fill(i: int) -> None:
        try:
            image = load_image(paths[i], None if boxes is None else boxes[i])
        except DataError as error:
            failures.append((i, str(error)))
            return
        if image.shape[:2] != (height, width):
            if resolution is None:
                failures.append((i, f"image {paths[i]!r} is {image.shape[1]}x{image.shape[0]}, not {width}x{height} like "
                                    f"{paths[first]!r}; set the data's cache_resolution to cache images of different sizes"))
                return
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        out[i] = image

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fill, range(len(paths))))
    return out, sorted(failures)


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
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The uint8 cache of ``paths``, and the (index, reason) of every image that could not be decoded.

    Where any image fails, the array is not usable: drop those images and build again.

    With ``cache_dir`` the array is written once to ``<cache_dir>/<key>.npy`` and later memory-mapped.
    """
    if cache_dir is None:
        return decode_into(paths, boxes, resolution, lambda shape: np.zeros(shape, dtype=np.uint8), workers)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{cache_key(paths, boxes, resolution)}.npy"
    if target.is_file():
        log.info("reading image cache %s", target)
        return np.load(target, mmap_mode="c"), []
    partial = target.with_suffix(f".{os.getpid()}.partial")
    array, failures = decode_into(
        paths, boxes, resolution,
        lambda shape: np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape), workers,
    )
    array.flush()
    del array
    if failures:  # a cache with holes is never kept; the caller reports or drops these images
        partial.unlink()
        return np.zeros((0, 1, 1, 3), dtype=np.uint8), failures
    os.replace(partial, target)
    log.info("wrote image cache %s", target)
    return np.load(target, mmap_mode="c"), []
