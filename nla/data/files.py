"""Image and video files: decoding an image to an RGB uint8 array (and checking a whole split can be), listing the
images and videos under a folder, and reading a video frame by frame.

A video is read frame by frame and sampled at a rate (``fps``): only the sampled frames are decoded into pixels, the
others are skipped, so memory stays flat however long the video is. A file that cannot be opened, that holds no
frame, or whose frames stop decoding half-way is reported by :class:`MediaError` (the frames read before are kept).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from nla.data.samples import DataError
from nla.faces.geometry import crop_to_box

# FFmpeg's own complaints about a broken file go to the terminal unasked; nla reports such a file in its row instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg")


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
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as error:  # OpenCV refuses before decoding: above its pixel limit, or a header it cannot use
        raise DataError(f"cannot decode image {path!r}: {opencv_refusal(error)}") from None
    except MemoryError:
        raise DataError(f"cannot decode image {path!r}: it does not fit in memory") from None
    if image is None:
        raise DataError(f"cannot decode image {path!r}: the file is empty or not an image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image if box is None else crop_to_box(image, box, path)


def opencv_refusal(error: Exception) -> str:
    """Why OpenCV refused an image, in a few words (its message is a file, a line and an assertion)."""
    text = str(error)
    if "CV_IO_MAX_IMAGE_PIXELS" in text:
        return "it has more pixels than OpenCV decodes (2^30; the OPENCV_IO_MAX_IMAGE_PIXELS variable raises it)"
    found = text.split("error: ", 1)[-1].strip().splitlines()
    return f"OpenCV refuses it ({found[0] if found else type(error).__name__})"


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


class MediaError(DataError):
    """A file ``nla predict`` cannot read: the message says why, and it becomes that file's row."""


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def list_media(root: str) -> list[str]:
    """Every file under ``root`` (nested folders too) but hidden ones, sorted, or ``root`` itself if it is a file:
    ``nla predict`` gives each a row, and one that is no image or video a row that says so. A folder that cannot be
    listed is named in a warning, not skipped in silence."""
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise DataError(f"prediction folder {root!r} does not exist")
    unlisted: list[str] = []
    found = []
    for folder, folders, names in os.walk(
        root, onerror=lambda error: unlisted.append(f"{error.filename} ({error.strerror})")
    ):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [os.path.join(folder, name) for name in names if not name.startswith(".")]
    if unlisted:
        warnings.warn(f"{len(unlisted)} folder(s) under {root} cannot be listed, their files are not predicted: "
                      + ", ".join(unlisted[:5]), stacklevel=2)  # fmt: skip
    return sorted(found)


def is_media(path: str) -> bool:
    """Whether a file's name says it is an image or a video nla reads."""
    return path.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES)


@dataclass(frozen=True)
class Frame:
    index: int  # the frame's number in the video, from 0
    time_s: float  # its time from the start
    image: np.ndarray  # H x W x 3 RGB uint8


def video_frames(path: str, fps: float) -> Iterator[Frame]:
    """The frames of a video at ``fps`` per second (every frame if the video has fewer): the first frame, then the
    first one at or after each further 1 / ``fps`` seconds."""
    if not fps > 0:
        raise DataError(f"fps {fps} must be above 0: frames sampled per second of video")
    if not os.path.isfile(path):
        raise MediaError(f"video {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise MediaError(f"video {path!r} is an empty file")
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise MediaError(f"cannot decode video {path!r}: OpenCV cannot open it")
        native = capture.get(cv2.CAP_PROP_FPS)
        native = native if native and math.isfinite(native) and native > 0 else 25.0
        step, next_time, index, sampled = 1.0 / fps, 0.0, 0, 0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        while True:
            if not capture.grab():
                break
            time_s = index / native
            if time_s + 1e-9 >= next_time:
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    raise MediaError(f"cannot decode frame {index} of video {path!r}")
                sampled += 1
                next_time = (math.floor(time_s / step + 1e-9) + 1) * step
                yield Frame(index, time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
        if sampled == 0:
            raise MediaError(f"cannot decode video {path!r}: it holds no frame OpenCV can read")
        if total and index < total - 1 and index < 0.9 * total:
            raise MediaError(f"video {path!r} stops decoding at frame {index} of {total}; the frames before are kept")
    finally:
        capture.release()
