"""The uint8 image cache: decode once, read back the same pixels, and never reuse a stale cache."""

import os

import numpy as np
import pytest

from nla.data import build_image_cache, load_image, read_rafdb
from tests.fakes import write_rafdb


@pytest.fixture()
def images(tmp_path):
    root = write_rafdb(tmp_path / "rafdb", train_per_class=2, test_per_class=1, size=20)
    return read_rafdb(root, "train").paths


def test_cache_in_memory_holds_the_decoded_pixels(images):
    cache, failures = build_image_cache(images)
    assert failures == [] and cache.shape == (14, 20, 20, 3) and cache.dtype == np.uint8
    for i, path in enumerate(images):
        assert np.array_equal(cache[i], load_image(path))


def test_cache_file_round_trip_and_invalidation(images, tmp_path):
    folder = tmp_path / "cache"
    first, _ = build_image_cache(images, cache_dir=folder)
    (written,) = folder.glob("*.npy")
    stamp = written.stat().st_mtime_ns
    again, _ = build_image_cache(images, cache_dir=folder)
    assert isinstance(again, np.memmap) and np.array_equal(again, first)
    assert written.stat().st_mtime_ns == stamp  # read back, not rebuilt
    # A changed image gets a new cache; the old one is left alone.
    os.utime(images[0], ns=(stamp + 10**9, stamp + 10**9))
    build_image_cache(images, cache_dir=folder)
    assert len(list(folder.glob("*.npy"))) == 2
    resized, _ = build_image_cache(images, resolution=12)
    assert resized.shape == (14, 12, 12, 3)


def test_cache_reports_unreadable_images_and_keeps_no_partial_file(images, tmp_path):
    with open(images[3], "wb") as handle:
        handle.write(b"broken")
    unusable, failures = build_image_cache(images, cache_dir=tmp_path / "cache")
    assert len(unusable) == 0 and [i for i, _ in failures] == [3] and "cannot decode" in failures[0][1]
    assert list((tmp_path / "cache").iterdir()) == []


def test_images_of_different_sizes_are_cached_at_one_resolution(tmp_path):
    import cv2

    from nla.data import DataError

    cv2.imwrite(str(tmp_path / "a.png"), np.full((10, 10, 3), 50, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((12, 8, 3), 200, np.uint8))
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    with pytest.raises(DataError, match="different sizes"):
        build_image_cache(paths)
    cache, failures = build_image_cache(paths, mixed_size_resolution=16)
    assert not failures and cache.shape == (2, 16, 16, 3) and cache[1].min() == 200  # both readable, resized
    fixed, _ = build_image_cache(paths, resolution=6, mixed_size_resolution=16)
    assert fixed.shape == (2, 6, 6, 3)  # an explicit resolution wins
