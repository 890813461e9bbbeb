"""The normalisation follows the data: measured on the training images once, then read back."""

import numpy as np
import pytest

from nla.data import ImageFolderDataModule, read_rafdb
from nla.data.cache import CacheSettings
from nla.data.stats import measure_stats
from nla.preprocessing import Preprocessing


def test_measured_once_and_read_back(rafdb_root, tmp_path):
    train = read_rafdb(rafdb_root, "train")
    pixels = (
        np.concatenate(
            [np.asarray(__import__("nla").data.load_image(p), dtype=np.float64).reshape(-1, 3) for p in train.paths]
        )
        / 255
    )
    mean, std = measure_stats(train, cache_dir=tmp_path)
    assert mean == pytest.approx(tuple(pixels.mean(0)), abs=1e-4) and std == pytest.approx(
        tuple(pixels.std(0)), abs=1e-4
    )
    (stored,) = tmp_path.glob("stats-*.json")
    stored.write_text('{"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}')  # what is stored is what is used
    assert measure_stats(train, cache_dir=tmp_path) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_a_folder_dataset_is_normalised_with_its_own_statistics(folder_root, tmp_path):
    data = ImageFolderDataModule(
        str(folder_root),
        preprocessing=Preprocessing(image_size=16),
        cache=CacheSettings(dir=str(tmp_path)),
        num_workers=0,
    )
    data.setup("fit")
    measured = data.preprocessing.mean
    assert measured is not None and measured != (0.577, 0.4494, 0.4001)
    assert data.hparams.preprocessing["mean"] == list(measured)  # the checkpoint records what the model trained with
    given = ImageFolderDataModule(
        str(folder_root),
        preprocessing=Preprocessing(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)),
        num_workers=0,
    )
    given.setup("fit")
    assert given.preprocessing.mean == (0.5, 0.5, 0.5)
