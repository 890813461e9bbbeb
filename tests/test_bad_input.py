"""Bad input is caught when the DataModule sets up, before the first step, with one message naming the culprit."""

import shutil

import numpy as np
import pytest

from nla.data import DataError, RAFDBDataModule, FERPlusDataModule
from nla.data.synthetic import write_rafdb


@pytest.fixture()
def rafdb_copy(tmp_path):
    return write_rafdb(tmp_path / "rafdb", train_per_class=3, test_per_class=2, size=16)


def setup_fit(root, **kwargs):
    data = RAFDBDataModule(str(root), image_size=16, num_workers=0, **kwargs)
    data.setup("fit")
    return data


def label_file(root):
    return root / "basic" / "EmoLabel" / "list_patition_label.txt"


def test_missing_root_and_missing_label_file(tmp_path, rafdb_copy):
    with pytest.raises(DataError, match="RAF-DB root .*absent.* does not exist"):
        setup_fit(tmp_path / "absent")
    label_file(rafdb_copy).unlink()
    with pytest.raises(DataError, match=r"no RAF-DB found at .*list_patition_label\.txt"):
        setup_fit(rafdb_copy)
    with pytest.raises(DataError, match="FER\\+ folder .*FER2013Train.* does not exist"):
        FERPlusDataModule(str(tmp_path)).setup("fit")


def test_listed_image_that_is_absent(rafdb_copy):
    (rafdb_copy / "basic" / "Image" / "aligned" / "train_00004_aligned.jpg").unlink()
    with pytest.raises(DataError, match=r"list_patition_label\.txt:4: lists image .*train_00004_aligned\.jpg.*does not exist"):
        setup_fit(rafdb_copy)


@pytest.mark.parametrize("pipeline", ["albumentations", "cached"])
def test_corrupt_image_is_named_before_training(rafdb_copy, pipeline):
    image = rafdb_copy / "basic" / "Image" / "aligned" / "train_00002_aligned.jpg"
    image.write_bytes(image.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=r"list_patition_label\.txt:2: cannot decode image .*train_00002_aligned\.jpg"):
        setup_fit(rafdb_copy, pipeline=pipeline)


@pytest.mark.parametrize("pipeline", ["albumentations", "cached"])
def test_skip_unreadable_drops_and_reports(rafdb_copy, pipeline):
    (rafdb_copy / "basic" / "Image" / "aligned" / "train_00003_aligned.jpg").write_bytes(b"not an image")
    (rafdb_copy / "basic" / "Image" / "aligned" / "train_00005_aligned.jpg").unlink()
    with pytest.warns(UserWarning, match="skipped 2 unreadable train image"):
        data = setup_fit(rafdb_copy, pipeline=pipeline, skip_unreadable=True)
    assert len(data.splits["train"]) == 21 - 2
    assert [p.rsplit("/", 1)[1] for p in data.skipped["train"]] == ["train_00003_aligned.jpg", "train_00005_aligned.jpg"]
    if pipeline == "cached":
        assert len(data.caches["train"]) == 19


def test_label_outside_the_class_range(rafdb_copy):
    lines = label_file(rafdb_copy).read_text().splitlines()
    lines[6] = lines[6].split()[0] + " 9"
    label_file(rafdb_copy).write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"list_patition_label\.txt:7: label 9 is outside the class range 1\.\.7"):
        setup_fit(rafdb_copy)


def test_malformed_label_line(rafdb_copy):
    lines = label_file(rafdb_copy).read_text().splitlines()
    lines[2] = lines[2].split()[0] + " happy"
    label_file(rafdb_copy).write_text("\n".join(lines))
    with pytest.raises(DataError, match=r":3: label 'happy' is not an integer"):
        setup_fit(rafdb_copy)


def test_empty_class(rafdb_copy):
    lines = [l for l in label_file(rafdb_copy).read_text().splitlines() if not (l.startswith("train_") and l.endswith(" 2"))]
    label_file(rafdb_copy).write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"the train split has no images of class 'Fear' \(index 1\)"):
        setup_fit(rafdb_copy)


def test_num_classes_that_disagrees_with_the_data(rafdb_copy, tmp_path):
    from lightning.pytorch import Trainer

    from nla import NLAModule

    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    with pytest.raises(DataError, match=r"the model has num_classes=8 but the data has 7 classes"):
        trainer.fit(NLAModule(num_classes=8), datamodule=RAFDBDataModule(str(rafdb_copy), image_size=16, num_workers=0))


@pytest.mark.parametrize("rate", [1.0, -0.2])
def test_noise_rate_outside_range(rafdb_copy, rate):
    with pytest.raises(DataError, match=f"noise_rate {rate} is outside \\[0, 1\\)"):
        setup_fit(rafdb_copy, noise_rate=rate)


def test_imbalance_factor_below_one(rafdb_copy):
    with pytest.raises(DataError, match="imbalance_factor 0.5 is below 1"):
        setup_fit(rafdb_copy, imbalance_factor=0.5)


def test_noisy_label_file_naming_an_unknown_image(rafdb_copy, tmp_path):
    bad = tmp_path / "noise.txt"
    bad.write_text("train_00001.jpg 2\ntrain_99999.jpg 3\n")
    with pytest.raises(DataError, match=r"noise\.txt:2: names image 'train_99999\.jpg', which is not in the training split"):
        setup_fit(rafdb_copy, train_label_file=str(bad))
