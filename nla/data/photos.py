"""Photos rather than aligned face crops: the face of each image found (:mod:`nla.faces`) before it is evaluated."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from nla.data.images import load_image
from nla.data.samples import Samples, check_files_exist
from nla.faces import FaceDetector


def find_faces(samples: Samples, detector: FaceDetector, workers: int, split: str, who: str) -> Samples:
    """Crop each image of an evaluation split to its largest face, or keep it whole where none is found."""

    def crop(path: str) -> tuple[tuple[int, int, int, int], bool]:
        image = load_image(path)
        found = detector.crop_box(image)
        return (found, True) if found is not None else ((0, 0, image.shape[1], image.shape[0]), False)

    check_files_exist(samples, split)
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(pool.map(crop, samples.paths))
    found = sum(ok for _, ok in results)
    rank_zero_info(
        f"{who} {split}: a face was found in {found} of {len(samples)} images"
        + (f"; the other {len(samples) - found} are evaluated whole" if found < len(samples) else "")
    )
    return dataclasses.replace(samples, boxes=np.asarray([box for box, _ in results], dtype=np.float32))
