"""The per-channel mean and std that normalise a dataset's images, measured on its training images.

Measured once on a seeded sample of the training split and kept in a small JSON file keyed by the
images' names, sizes and times, so a later run on the same data reads it back instead of decoding again.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nla.data.cache import cache_key
from nla.data.files import load_image
from nla.data.samples import Samples
from nla.records import write_text_atomic

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nla"


def channel_stats(pixels: np.ndarray) -> Stats:
    """``(mean, std)`` per channel, as shares of 255, of uint8 pixels shaped ... x 3."""
    flat = pixels.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    return (tuple(round(float(v), 4) for v in mean), tuple(round(float(max(v, 1e-3)), 4) for v in std))  # type: ignore[return-value]


def measure_stats(
    samples: Samples,
    cache: Optional[np.ndarray] = None,
    max_images: int = 2000,
    seed: int = 0,
    cache_dir: Optional[str | Path] = None,
    workers: int = 1,
) -> Stats:
    """The mean and std of up to ``max_images`` training images (all of them when fewer), from the uint8
    ``cache`` when there is one, else decoded; read back from ``cache_dir`` when measured before."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(samples))[:max_images])
    paths = [samples.paths[i] for i in chosen]
    boxes = None if samples.boxes is None else samples.boxes[chosen]
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    stored = folder / f"stats-{cache_key(paths, boxes, None)}.json"
    if stored.is_file():
        data = json.loads(stored.read_text())
        return tuple(data["mean"]), tuple(data["std"])
    boxes_all: Any = samples.boxes
    if cache is not None:
        pixels = np.asarray(cache[chosen])
    else:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            images = list(
                pool.map(lambda i: load_image(samples.paths[i], None if boxes_all is None else boxes_all[i]), chosen)
            )
        pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    mean, std = channel_stats(pixels)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(stored, json.dumps({"mean": mean, "std": std, "images": len(chosen)}))
    except OSError:
        pass  # a read-only home only costs measuring again next time
    return mean, std
