"""The uint8 image cache: decode once, read back the same pixels, and never reuse a stale cache."""

import os

import numpy as np
import pytest

from nla.data import build_image_cache, load_image, read_rafdb
from nla.data.synthetic import write_rafdb


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
    cache, failures = build_image_cache(images, cache_dir=tmp_path / "cache")
    assert [i for i, _ in failures] == [3] and "cannot decode" in failures[0][1]
    assert list((tmp_path / "cache").iterdir()) == []


def test_images_of_different_sizes_need_a_cache_resolution(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 10, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((12, 8, 3), np.uint8))
    _, failures = build_image_cache([str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    assert failures and "set the data's cache_resolution" in failures[0][1]
    cache, failures = build_image_cache([str(tmp_path / "a.png"), str(tmp_path / "b.png")], resolution=16)
    assert not failures and cache.shape == (2, 16, 16, 3)


def test_a_fit_on_the_cached_pipeline_reuses_one_input_buffer(rafdb_root, tmp_path):
    """The training input (views and mirrors) goes straight to the model, and Lightning releases each batch
    before the next is augmented, so on the CPU every step writes into the same memory."""
    import torch
    from lightning.pytorch import Callback, Trainer

    from nla import NLAModule
    from nla.data import RAFDBDataModule

    class Inputs(Callback):
        def __init__(self):
            self.pointers, self.layouts = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            views = batch["views"]
            self.pointers.append(views.data_ptr())
            self.layouts.append(views.is_contiguous(memory_format=torch.channels_last) and len(views) == 2 * len(batch["label"]))

    inputs = Inputs()
    data = RAFDBDataModule(str(rafdb_root), image_size=16, batch_size=4, num_workers=0, pipeline="cached", drop_last=True)
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[inputs], default_root_dir=tmp_path)
    trainer.fit(NLAModule(backbone="resnet10t"), datamodule=data)
    assert len(inputs.pointers) >= 6 and all(inputs.layouts)
    assert len(set(inputs.pointers)) == 1
