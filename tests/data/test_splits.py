"""A validation split made where a dataset has none: seeded, stratified, grouped by subject, or k folds."""

import numpy as np
import pytest

from nla.data import DataError, HoldOut, Samples


def samples(per_class=(20, 10, 5), subjects=5):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    names = [f"S{i % subjects:03d}_{i:03d}.png" for i in range(len(labels))]
    return Samples(names, labels, ("anger", "happy", "sad"), names, [f"list:{i + 1}" for i in range(len(labels))])


def test_a_hold_out_is_stratified_seeded_and_disjoint():
    table = samples()
    train, held = HoldOut(val_fraction=0.2, seed=3).split(table)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(table)))
    assert np.bincount(table.labels[held], minlength=3).tolist() == [4, 2, 1]  # 20% of every class
    assert np.array_equal(held, HoldOut(val_fraction=0.2, seed=3).split(table)[1])
    assert not np.array_equal(held, HoldOut(val_fraction=0.2, seed=4).split(table)[1])


def test_k_folds_cover_every_image_once():
    table = samples()
    folds = [HoldOut(num_folds=5, fold=k).split(table)[1] for k in range(5)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(table)))
    assert all(np.bincount(table.labels[f], minlength=3).tolist() == [4, 2, 1] for f in folds)


def test_a_group_stays_on_one_side():
    table = samples(per_class=(30, 30, 30), subjects=9)
    for holdout in (
        HoldOut(val_fraction=0.3, group_pattern=r"S(\d+)_"),
        HoldOut(num_folds=3, fold=1, group_pattern=r"S\d+"),
    ):
        train, held = holdout.split(table)
        subjects = lambda indices: {table.names[i][:4] for i in indices}  # noqa: E731
        assert not subjects(train) & subjects(held)
        assert 0.15 < len(held) / len(table) < 0.45 and len(set(table.labels[held])) == 3


def test_bad_hold_out_settings_are_one_line():
    with pytest.raises(DataError, match="val_fraction 1.5 must lie strictly between 0 and 1"):
        HoldOut(val_fraction=1.5)
    with pytest.raises(DataError, match="fold 10 is outside 0..9"):
        HoldOut(num_folds=10, fold=10)
    with pytest.raises(DataError, match="group_pattern '\\(' is not a regular expression"):
        HoldOut(val_fraction=0.2, group_pattern="(")
    with pytest.raises(DataError, match=r"list:1: file name 'S000_000.png' does not match group_pattern 'subject"):
        HoldOut(val_fraction=0.2, group_pattern=r"subject\d+").split(samples())


def test_hold_out_settings_that_would_be_dropped_are_refused():
    """fold without num_folds, and num_folds beside val_fraction, were dropped without a word."""
    with pytest.raises(DataError, match="holdout fold 2 is a fold of num_folds; give --data.holdout.num_folds too"):
        HoldOut(fold=2)
    with pytest.raises(DataError, match="num_folds 5 and val_fraction 0.2: a fold is held out, or a share"):
        HoldOut(num_folds=5, val_fraction=0.2)


def test_a_group_pattern_alone_groups_the_default_hold_out_or_is_refused(tmp_path):
    """--data.holdout.group_pattern given alone was ignored: subjects on both sides of a folder's 20% hold-out."""
    from nla.data import ImageFolderDataModule, RAFDBDataModule
    from tests.fakes import write_image_folder

    root = write_image_folder(tmp_path / "ck", per_class=10, size=16, splits=("",))
    for path in sorted(root.rglob("*.png")):  # CK+-style names: the subject first
        path.rename(path.with_name(f"S{int(path.stem) % 5:03d}_{path.stem}.png"))
    data = ImageFolderDataModule(str(root), holdout=HoldOut(group_pattern=r"S(\d+)_"), num_workers=0)
    data.setup("fit")
    subjects = {split: {p.split("/")[-1][:4] for p in data.splits[split].paths} for split in ("train", "valid")}
    assert subjects["valid"] and not subjects["train"] & subjects["valid"]
    rafdb = RAFDBDataModule(str(tmp_path), holdout=HoldOut(group_pattern=r"(\d+)"), num_workers=0)
    with pytest.raises(DataError, match="keeps images together in a hold-out, and this data has a split of its own"):
        rafdb.preparation.effective_holdout("fit")
