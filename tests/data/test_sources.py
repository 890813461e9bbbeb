"""Every data source on a tiny synthetic copy in its real layout, and the real counts where the data is present."""

import numpy as np
import pytest

from nla.data import (
    AffectNetDataModule,
    CSVDataModule,
    DataError,
    FERPlusDataModule,
    ImageFolderDataModule,
    RAFDBDataModule,
    majority_vote,
    read_affectnet,
    read_csv_list,
    read_ferplus,
    read_rafdb,
)
from nla.data.protocols import LabelProtocol
from nla.data.sources import rafdb
from nla.preprocessing import Preprocessing
from tests.conftest import real_dataset

RAFDB_TRAIN = [1290, 281, 717, 4772, 1982, 705, 2524]
RAFDB_TEST = [329, 74, 160, 1185, 478, 162, 680]


def test_rafdb_both_layouts_give_the_same_table(rafdb_root, rafdb_folders_root):
    basic = read_rafdb(rafdb_root, "train")
    assert len(basic) == 42 and basic.classes == rafdb.CLASSES
    assert (
        basic.paths[0].endswith("basic/Image/aligned/train_00001_aligned.jpg") and basic.names[0] == "train_00001.jpg"
    )
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
    data = AffectNetDataModule(
        affectnet_root,
        num_classes=7,
        crop_face=True,
        balanced_sampler=True,
        preprocessing=Preprocessing(image_size=16),
        batch_size=4,
        num_workers=0,
    )
    data.setup("fit")
    assert data.splits["train"].boxes is not None
    batch = next(iter(data.train_dataloader()))
    assert batch.image.shape == (4, 3, 16, 16)
    assert type(data.train_dataloader().sampler).__name__ == "WeightedRandomSampler"


def test_image_folder_and_csv_sources(folder_root, tmp_path):
    data = ImageFolderDataModule(folder_root, preprocessing=Preprocessing(image_size=16), num_workers=0)
    assert data.class_names == ["angry", "happy", "sad"]
    data.setup("fit")
    assert len(data.splits["train"]) == 9 and data.val_split == "test"
    (tmp_path / "train.csv").write_text(
        "path,label\n"
        + "".join(f"{folder_root}/train/{c}/{i}.png,{c}\n" for c in ("angry", "happy", "sad") for i in range(3))
    )
    (tmp_path / "test.csv").write_text(
        "path,label\n" + "".join(f"{folder_root}/test/{c}/0.png,{k}\n" for k, c in enumerate(("angry", "happy", "sad")))
    )
    csv_data = CSVDataModule(
        class_names=["angry", "happy", "sad"],
        train_csv=str(tmp_path / "train.csv"),
        test_csv=str(tmp_path / "test.csv"),
        preprocessing=Preprocessing(image_size=16),
        num_workers=0,
    )
    csv_data.setup("fit")
    assert csv_data.splits["train"].class_counts().tolist() == [3, 3, 3]
    assert csv_data.splits["test"].labels.tolist() == [0, 1, 2]


@pytest.mark.realdata
def test_real_rafdb_counts():
    root = real_dataset("rafdb")
    assert read_rafdb(root, "train").class_counts().tolist() == RAFDB_TRAIN
    assert read_rafdb(root, "test").class_counts().tolist() == RAFDB_TEST


@pytest.mark.realdata
@pytest.mark.slow
def test_real_ferplus_counts_match_the_data_readme():
    root = real_dataset("ferplus")
    expected = {  # (fer2013new.csv 8 / 7 classes, label.csv 8 / 7 classes); the README's less the repeated rows
        "train": (25057, 24938, 25045, 24925),
        "valid": (3199, 3186, 3191, 3175),
        "test": (3153, 3137, 3137, 3122),
    }
    for split, counts in expected.items():
        got = (
            len(read_ferplus(root, split, 8, "fer2013new")),
            len(read_ferplus(root, split, 7, "fer2013new")),
            len(read_ferplus(root, split, 8, "label_csv")),
            len(read_ferplus(root, split, 7, "label_csv")),
        )
        assert got == counts, split
    train = read_ferplus(root, "train", 8)
    # The data README counts every named row; the release lists three training images twice with the same votes,
    # which nla uses once (so 25,060 - 3 images, one fewer neutral, sadness and anger).
    assert train.class_counts().tolist() == [8739, 7287, 3149, 3013, 2099, 119, 532, 119]
    assert any("3 images listed twice with the same votes" in note for note in train.notes)


@pytest.mark.realdata
def test_real_rafdb_noise_files_have_the_documented_flip_rates():
    root = real_dataset("rafdb")
    for rate, measured in ((0.1, 0.1011), (0.2, 0.2036), (0.3, 0.3033)):
        data = RAFDBDataModule(
            str(root), protocol=LabelProtocol(noise_rate=rate), num_workers=0, save_train_labels=False
        )
        train = data.labelled("train")
        assert train.flipped.mean() == pytest.approx(measured, abs=5e-5)
        assert np.all(train.labels[~train.flipped] == train.clean_labels[~train.flipped])


# --- every row becomes a sample or stops the run with its file and line ----------------------------------------


def rafdb_label_file(root):
    return root / "basic" / "EmoLabel" / "list_patition_label.txt"


@pytest.fixture()
def rafdb_copy(tmp_path):
    from tests.fakes import write_rafdb

    return write_rafdb(tmp_path / "rafdb", train_per_class=3, test_per_class=2, size=16)


def edit_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_missing_root_and_missing_label_file(tmp_path, rafdb_copy):
    with pytest.raises(DataError, match="RAF-DB root .*absent.* does not exist"):
        read_rafdb(tmp_path / "absent", "train")
    rafdb_label_file(rafdb_copy).unlink()
    with pytest.raises(DataError, match=r"no RAF-DB found at .*list_patition_label\.txt"):
        read_rafdb(rafdb_copy, "train")
    with pytest.raises(DataError, match="FER\\+ folder .*FER2013Train.* does not exist"):
        read_ferplus(tmp_path, "train")


def test_a_byte_order_mark_keeps_the_first_row(rafdb_copy):
    path = rafdb_label_file(rafdb_copy)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as a Windows editor saves it
    train = read_rafdb(rafdb_copy, "train")
    assert len(train) == 21 and train.names[0] == "train_00001.jpg"


@pytest.mark.parametrize(
    "row, message",
    [
        ("tran_00003.jpg 2", r":3: image name 'tran_00003.jpg' starts with neither 'train_' nor 'test_'"),
        ("train_00003.jpg 9", r":3: label 9 is outside the class range 1\.\.7"),
        ("train_00003.jpg happy", r":3: label 'happy' is not an integer"),
        ("train_00003.jpg", r":3: expected '<name>.jpg <label>'"),
        ("train_00001.jpg 4", r":3: lists image 'train_00001.jpg' again; .*list_patition_label.txt:1 already lists it"),
    ],
)
def test_a_bad_rafdb_row_is_named(rafdb_copy, row, message):
    edit_line(rafdb_label_file(rafdb_copy), 3, row)
    with pytest.raises(DataError, match=message):
        read_rafdb(rafdb_copy, "train")


def test_a_csv_list_names_a_repeated_image_and_keeps_a_bom(tmp_path, folder_root):
    rows = "".join(f"{folder_root}/train/happy/{i}.png,happy\n" for i in range(3))
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + f"path,label\n{rows}".encode())
    assert len(read_csv_list(tmp_path / "train.csv", ["angry", "happy", "sad"])) == 3
    (tmp_path / "twice.csv").write_text(f"path,label\n{rows}{folder_root}/train/happy/0.png,sad\n")
    with pytest.raises(DataError, match=r"twice\.csv:5: lists image .*0\.png' again; .*twice\.csv:2 already lists it"):
        read_csv_list(tmp_path / "twice.csv", ["angry", "happy", "sad"])


def test_ferplus_repeated_rows_are_used_once_or_stop_when_they_disagree(tmp_path):
    import csv

    from tests.fakes import write_ferplus

    root = write_ferplus(tmp_path / "ferplus", per_class=2, size=16)
    rows = list(csv.reader(open(root / "fer2013new.csv")))
    rows.append(rows[1])  # the first training row again, with the same votes
    with open(root / "fer2013new.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    train = read_ferplus(root, "train")
    assert len(train) == 16 and "listed twice with the same votes" in train.notes[-1]
    other = list(rows[1])
    other[2:12] = ["0", "0", "0", "0", "0", "0", "9", "1", "0", "0"]  # the same image, now fear
    rows.append(other)
    with open(root / "fer2013new.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(DataError, match=r"fer2013new\.csv:\d+: lists image 'fer0000000\.png' again with other votes"):
        read_ferplus(root, "train")


def test_image_folders_without_splits_are_class_folders(tmp_path):
    from nla.data import read_class_folders
    from tests.fakes import write_image_folder

    root = write_image_folder(tmp_path / "ck", classes=("anger", "happy"), per_class=2, size=16, splits=("",))
    samples = read_class_folders(root)
    assert samples.classes == ("anger", "happy") and samples.class_counts().tolist() == [2, 2]
    assert ImageFolderDataModule(str(root)).class_names == ["anger", "happy"]


def test_an_empty_rafdb_label_file_is_named(rafdb_copy):
    """An emptied list_patition_label.txt: 'the train split has no images of class Surprise'."""
    rafdb_label_file(rafdb_copy).write_text("")
    with pytest.raises(DataError, match=r"list_patition_label\.txt: is empty; expected a line"):
        read_rafdb(rafdb_copy, "train")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_label_csv_that_is_not_utf8_is_one_error_naming_it(folder_root, tmp_path, encoding):
    """A list saved as Latin-1 or as a spreadsheet's UTF-16 'Unicode text': a UnicodeDecodeError traceback."""
    listing = tmp_path / "train.csv"
    listing.write_bytes(f"path,label\n{folder_root}/train/angry/0.png,angry\nx\xe9.png,angry\n".encode(encoding))
    with pytest.raises(DataError, match=rf"{listing}: is not UTF-8 text"):
        read_csv_list(listing, ["angry", "happy", "sad"])


def test_a_csv_row_with_more_columns_than_its_header_is_refused(folder_root, tmp_path):
    """An unquoted comma in a path shifted the columns, and the row trained with the path's tail as its label."""
    listing = tmp_path / "train.csv"
    listing.write_text(f"path,label\n{folder_root}/train/angry/0.png,angry,extra\n")
    with pytest.raises(DataError, match=r"train\.csv:2: 3 columns where the header has 2"):
        read_csv_list(listing, ["angry", "happy", "sad"])


def test_a_protocol_file_found_nowhere_is_named_as_given(rafdb_copy, tmp_path, monkeypatch):
    """--data.protocol.train_label_file nope.txt: 'does not exist' named '<root>/nope.txt', a path never typed."""
    monkeypatch.chdir(tmp_path)
    data = RAFDBDataModule(
        str(rafdb_copy),
        num_workers=0,
        preprocessing=Preprocessing(image_size=16),
        protocol=LabelProtocol(train_label_file="nope.txt"),
    )
    with pytest.raises(DataError, match=r"'nope\.txt' does not exist: neither in the working directory .* nor under"):
        data.setup("fit")


def test_a_fit_of_a_folder_with_a_val_split_says_which_split_it_validates_on(tmp_path):
    from tests.fakes import write_image_folder

    root = write_image_folder(tmp_path / "folder", splits=("train", "val"))
    data = ImageFolderDataModule(str(root), num_workers=0, preprocessing=Preprocessing(image_size=16))
    with pytest.raises(DataError, match=r"no folder for split 'test'.*--data\.val_split valid"):
        data.read_split("test")
