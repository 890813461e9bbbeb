"""Decoding image files to RGB uint8 arrays, and checking a whole split can be decoded before training."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import cv2
import numpy as np

from nla.data.samples import DataError
from nla.faces.geometry import crop_to_box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_image(path: str, box: Optional[Sequence[float]] = None) -> np.ndarray:
    """An H x W x 3 RGB uint8 array; grayscale files are repeated to three channels.

    ``box`` = (x, y, w, h) crops to a face box; a box that reaches past the image's edges is filled there by
    repeating the edge pixels (so a square box gives a square crop).
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"cannot decode image {path!r}: the file does not exist") from None
    except OSError as error:
        raise DataError(f"cannot read image {path!r}: {error.strerror or error}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image {path!r}: the file is empty or not an image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image if box is None else crop_to_box(image, box, path)


def find_unreadable(
    paths: Sequence[str], boxes: Optional[np.ndarray] = None, workers: int = 8
) -> list[tuple[int, str]]:
    """(index, reason) for every image that cannot be decoded; decodes in threads (OpenCV releases the GIL)."""

    def check(i: int) -> Optional[tuple[int, str]]:
        try:
            load_image(paths[i], None if boxes is None else boxes[i])
        except DataError as error:
            return i, str(error)
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [bad for bad in pool.map(check, range(len(paths))) if bad is not None]


def list_files(root: str, suffixes: tuple[str, ...], kind: str) -> list[str]:
    """Every file under ``root`` whose name ends in one of ``suffixes`` (nested folders included), in sorted order;
    ``root`` itself if it is such a file. ``kind`` names them in the message for a file of another kind."""
    if os.path.isfile(root):
        if not root.lower().endswith(suffixes):
            raise DataError(f"{root!r} is neither a folder nor {kind} ({', '.join(suffixes)})")
        return [root]
    if not os.path.isdir(root):
        raise DataError(f"prediction folder {root!r} does not exist")
    found = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(suffixes)
    ]
    return sorted(found)


def list_images(root: str) -> list[str]:
    """Every image file under ``root``, nested folders included, in sorted order; ``root`` itself if it is one."""
    return list_files(root, IMAGE_SUFFIXES, "an image file")
