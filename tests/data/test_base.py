"""The DataModules: which splits each stage reads, the two pipelines' batches, hold-outs where a dataset has no
split, and a bad image met mid-epoch reported from the main process."""

import numpy as np
import pytest
import torch

from nla.data import CSVDataModule, DataError, ImageFolderDataModule, RAFDBDataModule
from nla.data.pipelines import UnpaddedDistributedSampler
from nla.data.splits import HoldOut
from nla.preprocessing import Preprocessing
from tests.fakes import write_image_folder, write_rafdb


class FakeTrainer:
    training, world_size, global_rank = True, 1, 0


@pytest.mark.parametrize("pipeline", ["albumentations", "cached"])
def test_training_batches_carry_the_views_and_their_mirrors(rafdb_root, pipeline):
    data = RAFDBDataModule(
        str(rafdb_root), preprocessing=Preprocessing(image_size=16), batch_size=4, num_workers=0, pipeline=pipeline
    )
    data.setup("fit")
    data.trainer = FakeTrainer()
    batch = data.on_after_batch_transfer(data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0), 0)
    assert batch.image.shape == (4, 3, 16, 16) and batch.label.shape == (4,)
    assert torch.equal(batch.mirror, batch.image.flip(-1))
    assert data.train_batches == 11  # 42 images in batches of 4


def test_each_stage_reads_only_its_splits(rafdb_root):
    data = RAFDBDataModule(str(rafdb_root), num_workers=0)
    data.setup("test")
    assert list(data.splits) == ["test"]
    data.setup("predict")
    assert list(data.splits) == ["test"]


def test_testing_a_csv_list_needs_no_training_list(folder_root, tmp_path):
    (tmp_path / "test.csv").write_text(
        "path,label\n" + "".join(f"test/{c}/0.png,{c}\n" for c in ("angry", "happy", "sad"))
    )
    data = CSVDataModule(
        class_names=["angry", "happy", "sad"],
        test_csv=str(tmp_path / "test.csv"),
        root=str(folder_root),
        num_workers=0,
        preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3),
    )
    data.setup("test")
    assert data.splits["test"].labels.tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="no CSV list for the train split; set --data.train_csv"):
        data.setup("fit")


def test_a_folder_without_splits_gets_a_hold_out(tmp_path):
    root = write_image_folder(tmp_path / "ck", classes=("anger", "happy", "sad"), per_class=10, size=16, splits=("",))
    data = ImageFolderDataModule(str(root), preprocessing=Preprocessing(image_size=16), num_workers=0)
    data.setup("fit")
    assert data.val_split == "valid" and len(data.splits["train"]) == 24 and len(data.splits["valid"]) == 6
    assert not set(data.splits["train"].paths) & set(data.splits["valid"].paths)
    whole = ImageFolderDataModule(str(root), num_workers=0)
    whole.setup("test")  # testing a folder with no hold-out set evaluates every image
    assert len(whole.splits["test"]) == 30
    folded = ImageFolderDataModule(str(root), num_workers=0, holdout=HoldOut(num_folds=5, fold=2))
    folded.setup("test")  # with a hold-out set, test is the held-out fold
    assert len(folded.splits["test"]) == 6


def test_a_bad_image_met_mid_epoch_names_its_label_file_and_line(tmp_path):
    root = write_rafdb(tmp_path / "rafdb", train_per_class=2, test_per_class=1, size=16)
    data = RAFDBDataModule(
        str(root), preprocessing=Preprocessing(image_size=16), batch_size=14, num_workers=2, check_images="exists"
    )
    data.setup("fit")  # only existence is checked before training
    (root / "basic" / "Image" / "aligned" / "train_00003_aligned.jpg").write_bytes(b"broken after the checks")
    batch = next(iter(data.train_dataloader()))  # decoded in a worker process
    with pytest.raises(
        DataError, match=r"^\S+list_patition_label\.txt:3: cannot decode image .*train_00003_aligned\.jpg"
    ):
        data.on_before_batch_transfer(batch, 0)


def test_evaluation_across_processes_visits_each_image_once():
    shards = [list(UnpaddedDistributedSampler(range(10), 3, rank)) for rank in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(10)) and [len(s) for s in shards] == [4, 3, 3]


def test_bad_sizes_and_statistics_are_refused(rafdb_root):
    with pytest.raises(DataError, match="image_size 4 is too small"):
        RAFDBDataModule(str(rafdb_root), preprocessing=Preprocessing(image_size=4))
    with pytest.raises(DataError, match="batch_size 0 must be at least 1"):
        RAFDBDataModule(str(rafdb_root), batch_size=0)
    with pytest.raises(DataError, match=r"std \(0.2, 0.0, 0.2\) must be three shares of 255"):
        RAFDBDataModule(str(rafdb_root), preprocessing=Preprocessing(std=(0.2, 0.0, 0.2)))


def test_a_data_root_under_the_home_folder_is_expanded(tmp_path, monkeypatch):
    """--data.root '~/RAF-DB' in a YAML file, where no shell expands it: 'does not exist'."""
    from tests.fakes import write_rafdb

    write_rafdb(tmp_path / "RAF-DB", train_per_class=2, test_per_class=1, size=16)
    monkeypatch.setenv("HOME", str(tmp_path))
    data = RAFDBDataModule("~/RAF-DB", num_workers=0)
    assert data.require_root() == str(tmp_path / "RAF-DB") and data.hparams["root"] == str(tmp_path / "RAF-DB")
