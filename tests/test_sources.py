"""Every data source on a tiny synthetic copy in its real layout, and the real counts where the data is present."""

import numpy as np
import pytest

from nla.data import (
    AffectNetDataModule, CSVDataModule, FERPlusDataModule, ImageFolderDataModule, RAFDBDataModule, majority_vote,
    read_affectnet, read_ferplus, read_rafdb,
)
from nla.data.sources import rafdb
from tests.conftest import real_dataset

RAFDB_TRAIN = [1290, 281, 717, 4772, 1982, 705, 2524]
RAFDB_TEST = [329, 74, 160, 1185, 478, 162, 680]


def test_rafdb_both_layouts_give_the_same_table(rafdb_root, rafdb_folders_root):
    basic = read_rafdb(rafdb_root, "train")
    assert len(basic) == 42 and basic.classes == rafdb.CLASSES
    assert basic.paths[0].endswith("basic/Image/aligned/train_00001_aligned.jpg") and basic.names[0] == "train_00001.jpg"
    assert read_rafdb(rafdb_root / "basic", "test").class_counts().tolist() == [3] * 7  # root may be basic/ itself
    folders = read_rafdb(rafdb_folders_root, "train")
    assert rafdb.find_layout(rafdb_folders_root)[0] == "folders"
    assert len(folders) == 42 and folders.names[0] == "train_00001.jpg"  # _aligned stripped, as label files name it
    assert all(f"/train/{label + 1}/" in path for path, label in zip(folders.paths, folders.labels))


def test_ferplus_majority_vote_rule():
    assert majority_vote([6, 0, 1, 1, 0, 0, 0, 0, 2, 0]) == 0
    assert majority_vote([4, 0, 0, 1, 3, 2, 0, 0, 0, 0]) is None  # 4 of 9 is not a majority
    assert majority_vote([1, 1, 1, 1, 1, 1, 1, 3, 0, 0]) == 7  # single votes are zeroed first
    assert majority_vote([0, 0, 0, 0, 0, 0, 0, 0, 10, 0]) is None  # unknown
    assert majority_vote([0, 0, 0, 0, 0, 0, 0, 0, 0, 10]) is None  # not a face


def test_ferplus_splits_classes_and_label_sources(ferplus_root):
    train8 = read_ferplus(ferplus_root, "train", 8)
    assert len(train8) == 24 and train8.class_counts().tolist() == [3] * 8  # unknown and NF rows dropped
    assert len(read_ferplus(ferplus_root, "train", 7)) == 21  # contempt dropped
    assert len(read_ferplus(ferplus_root, "valid", 8, "label_csv")) == 24
    assert "fer2013new.csv" in read_ferplus(ferplus_root, "test").origins[0]
    module = FERPlusDataModule(ferplus_root, num_classes=7)
    assert module.val_split == "valid" and module.class_names[-1] == "fear"


def test_affectnet_drops_codes_8_to_10_and_keeps_boxes(affectnet_root):
    train = read_affectnet(affectnet_root, "train", 7)
    assert len(train) == 21 and set(train.labels.tolist()) == set(range(7))
    assert len(read_affectnet(affectnet_root, "train", 8)) == 24
    assert train.boxes.shape == (21, 4) and train.boxes[0].tolist() == [8, 8, 16, 16]
    assert read_affectnet(affectnet_root, "test", 7).paths == read_affectnet(affectnet_root, "valid", 7).paths


def test_affectnet_face_crop_and_balanced_sampler(affectnet_root):
    data = AffectNetDataModule(affectnet_root, num_classes=7, crop_face=True, balanced_sampler=True, image_size=16,
                               batch_size=4, num_workers=0)
    data.setup("fit")
    assert data.splits["train"].boxes is not None
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert type(data.train_dataloader().sampler).__name__ == "WeightedRandomSampler"


def test_image_folder_and_csv_sources(folder_root, tmp_path):
    data = ImageFolderDataModule(folder_root, image_size=16, num_workers=0)
    assert data.class_names == ["angry", "happy", "sad"]
    data.setup("fit")
    assert len(data.splits["train"]) == 9 and data.val_split == "test"
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{folder_root}/train/{c}/{i}.png,{c}\n" for c in ("angry", "happy", "sad") for i in range(3)))
    (tmp_path / "test.csv").write_text("path,label\n" + "".join(f"{folder_root}/test/{c}/0.png,{k}\n" for k, c in enumerate(("angry", "happy", "sad"))))
    csv_data = CSVDataModule(class_names=["angry", "happy", "sad"], train_csv=str(tmp_path / "train.csv"),
                             test_csv=str(tmp_path / "test.csv"), image_size=16, num_workers=0)
    csv_data.setup("fit")
    assert csv_data.splits["train"].class_counts().tolist() == [3, 3, 3]
    assert csv_data.splits["test"].labels.tolist() == [0, 1, 2]


@pytest.mark.realdata
def test_real_rafdb_counts():
    root = real_dataset("rafdb")
    assert read_rafdb(root, "train").class_counts().tolist() == RAFDB_TRAIN
    assert read_rafdb(root, "test").class_counts().tolist() == RAFDB_TEST


@pytest.mark.realdata
def test_real_ferplus_counts_match_the_data_readme():
    root = real_dataset("ferplus")
    expected = {  # (fer2013new.csv 8 / 7 classes, label.csv 8 / 7 classes)
        "train": (25060, 24941, 25045, 24925), "valid": (3199, 3186, 3191, 3175), "test": (3153, 3137, 3137, 3122),
    }
    for split, counts in expected.items():
        got = (len(read_ferplus(root, split, 8, "fer2013new")), len(read_ferplus(root, split, 7, "fer2013new")),
               len(read_ferplus(root, split, 8, "label_csv")), len(read_ferplus(root, split, 7, "label_csv")))
        assert got == counts, split
    train = read_ferplus(root, "train", 8)
    assert train.class_counts().tolist() == [8740, 7287, 3149, 3014, 2100, 119, 532, 119]


@pytest.mark.realdata
def test_real_rafdb_noise_files_have_the_documented_flip_rates():
    root = real_dataset("rafdb")
    for rate, measured in ((0.1, 0.1011), (0.2, 0.2036), (0.3, 0.3033)):
        data = RAFDBDataModule(str(root), noise_rate=rate, num_workers=0)
        train = data._apply_protocols(read_rafdb(root, "train"))
        assert train.flipped.mean() == pytest.approx(measured, abs=5e-5)
        assert np.all(train.labels[~train.flipped] == train.clean_labels[~train.flipped])
