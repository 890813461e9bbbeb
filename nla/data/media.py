"""What ``nla predict`` reads: image files and video files (through OpenCV), listed from a folder or given one by one.

A video is read frame by frame and sampled at a rate (``fps``): only the sampled frames are decoded into pixels, the
others are skipped, so memory stays flat however long the video is. A file that cannot be opened, that holds no
frame, or whose frames stop decoding half-way is reported by :class:`MediaError` (the frames read before are kept).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from nla.data.images import IMAGE_SUFFIXES, list_files
from nla.data.samples import DataError

# FFmpeg's own complaints about a broken file go to the terminal unasked; nla reports such a file in its row instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg")


class MediaError(DataError):
    """A file ``nla predict`` cannot read: the message says why, and it becomes that file's row."""


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def list_media(root: str) -> list[str]:
    """Every image and video file under ``root`` (nested folders too), sorted; ``root`` itself if it is one."""
    return list_files(root, IMAGE_SUFFIXES + VIDEO_SUFFIXES, "an image or video file")


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
