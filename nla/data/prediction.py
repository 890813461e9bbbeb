"""Photos and videos rather than aligned face crops: the faces in them found (:mod:`nla.faces`) and cropped as the
training images were aligned, for evaluation (:func:`find_faces`) and for ``nla predict`` (:class:`PredictionMedia`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Optional

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import IterableDataset, get_worker_info

from nla.data.files import is_media, is_video, load_image, opencv_refusal, video_frames
from nla.data.samples import DataError, Samples, check_files_exist
from nla.faces import Backend, Face, FaceDetector, box_iou


def find_faces(
    samples: Samples, detector: FaceDetector, workers: int, split: str, who: str, skip_unreadable: bool = False
) -> Samples:
    """Crop each image of an evaluation split to its largest face, or keep it whole where none is found. With
    ``skip_unreadable``, an image that cannot be read keeps an empty box and is left to the split's checks, which
    drop and report it."""

    def crop(path: str) -> tuple[tuple[int, int, int, int], bool]:
        try:
            image = load_image(path)
        except UNREADABLE:
            if not skip_unreadable:
                raise
            return (0, 0, 0, 0), False
        found = detector.crop_box(image)
        return (found, True) if found is not None else ((0, 0, image.shape[1], image.shape[0]), False)

    if not skip_unreadable:  # when skipping, a missing file is one more unreadable image
        check_files_exist(samples, split)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(pool.map(crop, samples.paths))
    found = sum(ok for _, ok in results)
    rank_zero_info(
        f"{who} {split}: a face was found in {found} of {len(samples)} images"
        + (f"; the other {len(samples) - found} are evaluated whole" if found < len(samples) else "")
    )
    return dataclasses.replace(samples, boxes=np.asarray([box for box, _ in results], dtype=np.float32))


FaceChoice = Literal["largest", "all"]
#: What reading one file of a prediction folder can raise; the file gets a row that says why.
UNREADABLE = (DataError, cv2.error, MemoryError)


@dataclass(frozen=True)
class FaceSettings:
    """Finding the faces in photos rather than aligned crops, for ``predict``, ``validate`` and ``test``.

    Args:
        detect: Find the faces in each image and crop them as the training images were aligned; an image with no
            face found gets a prediction row that says so, or is evaluated whole.
        choice: ``largest``, or ``all`` the faces of a photo or frame (``predict``: a row for each).
        detector: ``auto`` (the best installed) or ``haar`` (OpenCV's cascades).
        align: Rotate and scale faces the detector gives landmarks for, so the eyes and mouth land where the
            training crops have them.
    """

    detect: bool = False
    choice: FaceChoice = "largest"
    detector: Backend = "auto"
    align: bool = True

    def make_detector(self) -> Optional[FaceDetector]:
        return FaceDetector(self.detector, align=self.align) if self.detect else None


@dataclass(frozen=True)
class Prediction:
    """What ``nla predict`` reads and writes.

    Args:
        root: A folder of images and videos (nested, any common format), or one file.
        fps: Frames sampled per second of video.
        draw_faces: Also write each photo with its faces boxed and labelled (``<output>/faces/``).
    """

    root: Optional[str] = None
    fps: float = 2.0
    draw_faces: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise DataError(f"fps {self.fps} must be a number above 0: frames sampled per second of video")


@dataclass
class Track:
    """A face followed across a video's sampled frames: the same ``number`` while its box overlaps the last one."""

    number: int
    box: tuple[int, int, int, int]


def follow(tracks: list[Track], faces: list[Face], next_number: int) -> tuple[list[int], list[Track], int]:
    """The track of each face of a frame: greedily the unclaimed track whose last box overlaps it most (IoU >= 0.3),
    else a new one. Returns the track numbers, the tracks after this frame and the next free number."""
    numbers, claimed, updated = [], set(), []
    for face in faces:
        overlaps = [(box_iou(face.box, t.box), t.number) for t in tracks if t.number not in claimed]
        best = max(overlaps, default=(0.0, -1))
        number = best[1] if best[0] >= 0.3 else next_number
        next_number += number == next_number
        claimed.add(number)
        numbers.append(number)
        updated.append(Track(number, face.box))
    return numbers, updated, next_number


class PredictionMedia(IterableDataset):
    """What ``nla predict`` feeds the model: every image, and every sampled frame of every video, or with a
    ``detector`` every face in them (the largest, or ``all``), cropped as the training images were aligned.

    Decoding, detection and cropping run in the DataLoader's workers, each reading its own share of the files, so
    the model sees full batches. Every item is a dict: ``image`` (the model's input), ``path``, ``frame`` and
    ``time_s`` (-1 and NaN for an image), ``face`` (its number in the picture, largest first; -1 without a
    detector), ``track`` (a face followed across a video's frames), ``box`` (x, y, w, h, -1 when not known),
    ``landmarks`` (the eyes' and the mouth's centres, NaN when not known), ``ok`` and ``error``. A file that cannot be
    read, or a picture without a face, gives one item with ``ok`` false and the reason.
    """

    def __init__(
        self,
        paths: list[str],
        transform: Any,
        image_size: int,
        detector: Optional[FaceDetector] = None,
        faces: FaceChoice = "largest",
        fps: float = 2.0,
    ) -> None:
        self.paths, self.transform, self.image_size = paths, transform, image_size
        self.detector, self.choice, self.fps = detector, faces, fps

    def _share(self) -> list[str]:
        """This process's and this worker's share of the files (every one of them in exactly one share)."""
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        world, rank = 1, 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        return self.paths[rank * workers + worker_id :: world * workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for path in self._share():
            if is_video(path):
                yield from self._video(path)
                continue
            try:  # one file's failure is that file's row, whatever it was: the others are still predicted
                items = list(self._picture(path, load_image(path), -1, math.nan))
            except UNREADABLE as failure:
                reason = str(failure) if isinstance(failure, DataError) else opencv_refusal(failure)
                if not is_media(path):  # a misnamed image is still predicted; anything else is said to be what it is
                    reason = f"not an image or a video file nla reads ({reason})"
                yield self._failed(path, reason)
                continue
            yield from items

    def _video(self, path: str) -> Iterator[dict[str, Any]]:
        tracks: list[Track] = []
        next_number = 0
        try:
            for frame in video_frames(path, self.fps):
                items = list(self._picture(path, frame.image, frame.index, frame.time_s))
                if self.detector is not None:
                    found = [item["_face"] for item in items if item["ok"]]
                    numbers, tracks, next_number = follow(tracks, found, next_number)
                    for item, number in zip([i for i in items if i["ok"]], numbers):
                        item["track"] = number
                yield from items
        except UNREADABLE as failure:  # a video that cannot be opened, or stops decoding: its row says so
            yield self._failed(path, str(failure) if isinstance(failure, DataError) else opencv_refusal(failure))

    def _picture(self, path: str, image: np.ndarray, frame: int, time_s: float) -> Iterator[dict[str, Any]]:
        if self.detector is None:
            yield self._item(path, image, frame, time_s)
            return
        found = self.detector.faces(image)
        if not found:
            yield self._failed(path, "no face found", frame, time_s)
            return
        for number, face in enumerate(found if self.choice == "all" else found[:1]):
            yield self._item(path, self.detector.crop(image, face, self.image_size), frame, time_s, number, face)

    def _item(
        self,
        path: str,
        image: np.ndarray,
        frame: int,
        time_s: float,
        number: int = -1,
        face: Optional[Face] = None,
    ) -> dict[str, Any]:
        box = face.box if face is not None else (-1, -1, -1, -1)
        return {
            "image": self.transform(image=image)["image"],
            "path": path,
            "frame": frame,
            "time_s": time_s,
            "face": number,
            "track": -1,
            "box": torch.tensor(box, dtype=torch.float32),
            "landmarks": torch.tensor(face.landmarks() if face else [math.nan] * 6, dtype=torch.float32),
            "ok": True,
            "error": "",
            "_face": face,
        }

    def _failed(self, path: str, reason: str, frame: int = -1, time_s: float = math.nan) -> dict[str, Any]:
        item = self._item(path, np.zeros((self.image_size, self.image_size, 3), np.uint8), frame, time_s)
        item.update(ok=False, error=reason)
        return item
