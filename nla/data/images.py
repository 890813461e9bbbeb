"""Decoding image files to RGB uint8 arrays, and checking a whole split can be decoded before training."""

from __future__ import annotations

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
