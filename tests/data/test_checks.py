"""Every image is checked before the first step: a bad one stops the run with the label file and line that
lists it, or is dropped and reported with skip_unreadable."""

import os

import pytest

from nla.data import DataError, RAFDBDataModule
from nla.preprocessing import Preprocessing
from tests.fakes import write_rafdb


@pytest.fixture()
def rafdb_copy(tmp_path):
    return write_rafdb(tmp_path / "rafdb", train_per_class=3, test_per_class=2, size=16)


def image(root, name):
    return root / "basic" / "Image" / "aligned" / f"{name}_aligned.jpg"


def setup_fit(root, **kwargs):
    data = RAFDBDataModule(str(root), preprocessing=Preprocessing(image_size=16), num_workers=0, **kwargs)
    data.setup("fit")
    return data


def test_listed_image_that_is_absent(rafdb_copy):
    image(rafdb_copy, "train_00004").unlink()
    with pytest.raises(
        DataError, match=r"list_patition_label\.txt:4: lists image .*train_00004_aligned\.jpg.*does not exist"
    ):
        setup_fit(rafdb_copy)


@pytest.mark.parametrize("pipeline", ["albumentations", "cached"])
def test_corrupt_image_is_named_before_training(rafdb_copy, pipeline):
    path = image(rafdb_copy, "train_00002")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=r"list_patition_label\.txt:2: cannot decode image .*train_00002_aligned\.jpg"):
        setup_fit(rafdb_copy, pipeline=pipeline)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_image_that_cannot_be_read_is_one_line_and_can_be_skipped(rafdb_copy):
    image(rafdb_copy, "train_00003").chmod(0)
    with pytest.raises(DataError, match=r":3: cannot read image .*train_00003_aligned\.jpg.*Permission denied"):
        setup_fit(rafdb_copy)
    assert len(setup_fit(rafdb_copy, skip_unreadable=True).splits["train"]) == 20


def test_a_read_error_is_one_line(rafdb_copy, monkeypatch):
    """The same check for anyone, root included: the read itself fails, as with a file without read permission."""
    import numpy as np

    real = np.fromfile

    def refuse(path, *args, **kwargs):
        if str(path).endswith("train_00003_aligned.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr("nla.data.files.np.fromfile", refuse)
    with pytest.raises(DataError, match=r":3: cannot read image .*train_00003_aligned\.jpg.*: Permission denied$"):
        setup_fit(rafdb_copy)
    with pytest.warns(UserWarning, match="skipped 1 unreadable train image"):
        assert len(setup_fit(rafdb_copy, skip_unreadable=True).splits["train"]) == 20


@pytest.mark.parametrize("pipeline", ["albumentations", "cached"])
def test_skip_unreadable_drops_and_reports(rafdb_copy, pipeline):
    image(rafdb_copy, "train_00003").write_bytes(b"not an image")
    image(rafdb_copy, "train_00005").unlink()
    with pytest.warns(UserWarning, match="skipped 2 unreadable train image"):
        data = setup_fit(rafdb_copy, pipeline=pipeline, skip_unreadable=True)
    assert len(data.splits["train"]) == 21 - 2
    assert [p.rsplit("/", 1)[1] for p in data.skipped["train"]] == [
        "train_00003_aligned.jpg",
        "train_00005_aligned.jpg",
    ]
    if pipeline == "cached":
        assert len(data.preparation.caches["train"]) == 19


def test_images_of_mixed_sizes_are_cached_not_called_unreadable(rafdb_copy):
    import cv2
    import numpy as np

    cv2.imwrite(str(image(rafdb_copy, "train_00006")), np.full((30, 22, 3), 128, np.uint8))
    data = setup_fit(rafdb_copy, pipeline="cached")
    assert len(data.splits["train"]) == 21 and not data.skipped
    assert data.preparation.caches["train"].shape[1:] == (16, 16, 3)  # cached at the training image size


def test_skip_unreadable_holds_when_faces_are_found_in_the_evaluation_split(rafdb_copy):
    """--data.faces.detect true read every test image to find its face before the checks, and stopped on the first
    unreadable one whatever skip_unreadable said."""
    from nla.data.prediction import FaceSettings

    image(rafdb_copy, "test_0001").write_bytes(image(rafdb_copy, "test_0001").read_bytes()[:100])  # truncated
    image(rafdb_copy, "test_0002").unlink()
    faces = FaceSettings(detect=True, detector="haar")
    data = RAFDBDataModule(str(rafdb_copy), preprocessing=Preprocessing(image_size=16), num_workers=0, faces=faces)
    with pytest.raises(DataError, match=r"test_0002_aligned\.jpg.*does not exist"):
        data.setup("test")
    data = RAFDBDataModule(
        str(rafdb_copy), preprocessing=Preprocessing(image_size=16), num_workers=0, faces=faces, skip_unreadable=True
    )
    with pytest.warns(UserWarning, match="skipped 2 unreadable test image"):
        data.setup("test")
    assert len(data.splits["test"]) == 14 - 2
