"""Label noise and long-tail protocols: exact counts, determinism, spread, and the label-file round trip."""

import numpy as np
import pytest

from nla.data import (
    DataError,
    RAFDBDataModule,
    add_label_noise,
    long_tail_indices,
    long_tail_profile,
    read_label_file,
    read_rafdb,
    write_label_file,
)
from nla.data.protocols import LabelProtocol, add_class_conditional_noise, apply_label_file, noise_transition
from nla.data.sources import ferplus
from nla.preprocessing import Preprocessing
from tests.conftest import real_dataset


def test_noise_flips_exactly_round_rate_n_each_to_another_class():
    labels = np.repeat(np.arange(7), 143)  # N = 1001
    noisy, flipped = add_label_noise(labels, 0.3, 7, seed=1)
    assert flipped.sum() == round(0.3 * 1001) == 300
    assert np.all(noisy[flipped] != labels[flipped]) and np.all(noisy[~flipped] == labels[~flipped])
    assert np.array_equal(noisy != labels, flipped)


def test_noise_is_deterministic_per_seed_and_spread_across_classes():
    labels = np.repeat(np.arange(7), 1000)
    a, mask_a = add_label_noise(labels, 0.2, 7, seed=3)
    b, mask_b = add_label_noise(labels, 0.2, 7, seed=3)
    c, _ = add_label_noise(labels, 0.2, 7, seed=4)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and not np.array_equal(a, c)
    # Flips hit every source class in proportion, and land uniformly on the six other classes.
    per_source = np.bincount(labels[mask_a], minlength=7)
    assert per_source.min() > 150 and per_source.max() < 250  # expected 200 each
    targets = np.zeros((7, 7), dtype=int)
    np.add.at(targets, (labels[mask_a], a[mask_a]), 1)
    assert np.all(np.diag(targets) == 0)
    off_diagonal = targets[~np.eye(7, dtype=bool)]
    assert off_diagonal.min() > 15 and off_diagonal.max() < 55  # expected about 33 each


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_noise_rate_outside_range_is_refused(rate):
    with pytest.raises(DataError, match=f"noise rate {rate} is outside"):
        add_label_noise([0, 1, 2], rate, 3, 0)


def test_long_tail_profile_and_subset():
    assert long_tail_profile(1000, 100, 5).tolist() == [1000, 316, 100, 31, 10]
    labels = np.repeat(np.arange(5), [1000, 900, 800, 700, 600])
    keep = long_tail_indices(labels, 100, seed=0)
    counts = np.bincount(labels[keep], minlength=5)
    assert counts.tolist() == [1000, 316, 100, 31, 10]
    assert counts.max() / counts.min() == pytest.approx(100)
    assert np.array_equal(keep, long_tail_indices(labels, 100, seed=0))
    assert not np.array_equal(keep, long_tail_indices(labels, 100, seed=1))
    reordered = np.bincount(labels[long_tail_indices(labels, 10, seed=0, class_order=[4, 3, 2, 1, 0])], minlength=5)
    assert reordered.tolist()[::-1] == long_tail_profile(600, 10, 5).tolist()


def test_imbalance_factor_below_one_is_refused():
    with pytest.raises(DataError, match="imbalance factor 0.5 is below 1"):
        long_tail_indices([0, 1, 1], 0.5)
    with pytest.raises(DataError, match="imbalance_factor 0.9 is below 1"):
        RAFDBDataModule("x", protocol=LabelProtocol(imbalance_factor=0.9))
    for rate in (-0.1, 1.5, 1.0):
        with pytest.raises(DataError, match=f"noise_rate {rate} is outside"):
            RAFDBDataModule("x", protocol=LabelProtocol(noise_rate=rate))


def test_label_file_round_trip_keeps_names_labels_and_subsets(rafdb_root, tmp_path):
    train = read_rafdb(rafdb_root, "train")
    noisy, flipped = add_label_noise(train.labels, 0.25, 7, seed=0)
    path = write_label_file(tmp_path / "noisy.txt", train.names, noisy, code_offset=1)
    assert path.read_text().splitlines()[0].split()[0] == "train_00001.jpg"
    names, labels, _ = read_label_file(path, 7, code_offset=1)
    assert names == train.names and np.array_equal(labels, noisy)
    reloaded = apply_label_file(train, path, code_offset=1)
    assert np.array_equal(reloaded.flipped, flipped)
    with pytest.raises(FileExistsError):
        write_label_file(path, train.names, noisy)
    subset = train.subset([5, 1, 9])
    write_label_file(tmp_path / "subset.txt", subset.names, subset.labels, code_offset=1)
    again = apply_label_file(train, tmp_path / "subset.txt", code_offset=1)
    assert again.names == subset.names and np.array_equal(again.labels, subset.labels)


def test_datamodule_protocols_touch_only_the_training_split(rafdb_root, tmp_path):
    clean = RAFDBDataModule(str(rafdb_root), preprocessing=Preprocessing(image_size=16), num_workers=0)
    clean.setup("fit")
    noisy = RAFDBDataModule(
        str(rafdb_root),
        protocol=LabelProtocol(noise_rate=0.3, noise_seed=5, noise_source="generate", imbalance_factor=3),
        preprocessing=Preprocessing(image_size=16),
        num_workers=0,
        save_train_labels=False,
    )
    noisy.setup("fit")
    assert np.array_equal(noisy.splits["test"].labels, clean.splits["test"].labels)
    train = noisy.splits["train"]
    assert train.flipped.sum() == round(0.3 * len(train))
    counts = np.bincount(train.clean_labels, minlength=7)
    assert counts.max() / counts.min() == pytest.approx(3, rel=0.2) and counts.max() == 6


def test_rafdb_noise_overlay_prefers_the_shipped_file(tmp_path):
    from tests.fakes import write_rafdb

    root = write_rafdb(tmp_path / "rafdb", train_per_class=10, test_per_class=1, size=16)
    train = read_rafdb(root, "train")
    noisy, _ = add_label_noise(train.labels, 0.3, 7, seed=42)
    write_label_file(root / "basic" / "EmoLabel" / "noise03.txt", train.names, noisy, code_offset=1)
    shipped = RAFDBDataModule(
        str(root),
        protocol=LabelProtocol(noise_rate=0.3),
        preprocessing=Preprocessing(image_size=16),
        num_workers=0,
        save_train_labels=False,
    )
    shipped.setup("fit")
    assert np.array_equal(shipped.splits["train"].labels, noisy)
    assert "noise03.txt" in shipped.protocol_notes[0]
    generated = RAFDBDataModule(
        str(root),
        protocol=LabelProtocol(noise_rate=0.3, noise_source="generate", noise_seed=42),
        preprocessing=Preprocessing(image_size=16),
        num_workers=0,
        save_train_labels=False,
    )
    generated.setup("fit")
    assert "generated with seed 42" in generated.protocol_notes[0]
    assert generated.splits["train"].flipped.sum() == 21


def test_a_missing_or_partial_standard_noise_file_stops_instead_of_changing_the_protocol(tmp_path):
    from tests.fakes import write_rafdb

    root = write_rafdb(tmp_path / "rafdb", train_per_class=4, test_per_class=1, size=16)
    data = dict(preprocessing=Preprocessing(image_size=16), num_workers=0, save_train_labels=False)
    with pytest.raises(
        DataError,
        match=r"noise_rate 0.3 uses the dataset's standard noisy-label file .*noise03\.txt.*"
        r"does not exist; .*--data.protocol.noise_source generate",
    ):
        RAFDBDataModule(str(root), protocol=LabelProtocol(noise_rate=0.3), **data).setup("fit")
    train = read_rafdb(root, "train")
    write_label_file(root / "basic" / "EmoLabel" / "noise03.txt", train.names[:20], train.labels[:20], code_offset=1)
    with pytest.raises(DataError, match=r"noise03\.txt gives labels for 20 of the 28 training images"):
        RAFDBDataModule(str(root), protocol=LabelProtocol(noise_rate=0.3), **data).setup("fit")
    with pytest.raises(DataError, match="no standard noisy-label file for noise_rate 0.25"):
        RAFDBDataModule(str(root), protocol=LabelProtocol(noise_rate=0.25, noise_source="standard_file"), **data).setup(
            "fit"
        )
    generated = RAFDBDataModule(
        str(root), protocol=LabelProtocol(noise_rate=0.25), **data
    )  # no standard file for this rate: generated
    generated.setup("fit")
    assert "generated with seed 0" in generated.protocol_notes[0]


def test_a_label_file_that_names_an_image_twice_is_refused(rafdb_root, tmp_path):
    path = tmp_path / "subset.txt"
    path.write_text("train_00001.jpg 2\ntrain_00002.jpg 3\ntrain_00001.jpg 5\n")
    with pytest.raises(DataError, match=r"subset\.txt:3: lists image 'train_00001.jpg' again; .*subset\.txt:1"):
        apply_label_file(read_rafdb(rafdb_root, "train"), path, code_offset=1)
    (tmp_path / "unknown.txt").write_text("train_00001.jpg 2\ntrain_99999.jpg 3\n")
    with pytest.raises(
        DataError, match=r"unknown\.txt:2: names image 'train_99999\.jpg', which is not in the training split"
    ):
        apply_label_file(read_rafdb(rafdb_root, "train"), tmp_path / "unknown.txt", code_offset=1)


RAFDB_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


def test_class_conditional_noise_flips_rate_of_each_class_along_the_matrix():
    labels = np.repeat(np.arange(7), 1000)
    transition = noise_transition("annotator", RAFDB_CLASSES)
    assert np.allclose(transition.sum(1), 1) and np.all(np.diag(transition) == 0)
    fear, surprise, disgust, anger = 1, 0, 2, 5
    assert transition[fear].argmax() == surprise and transition[disgust].argmax() == anger  # as annotators err
    noisy, flipped = add_class_conditional_noise(labels, 0.3, transition, seed=2)
    assert np.all(np.bincount(labels[flipped], minlength=7) == 300)  # exactly the rate in every class
    assert np.all(noisy[flipped] != labels[flipped]) and np.array_equal(noisy != labels, flipped)
    landed = np.zeros((7, 7))
    np.add.at(landed, (labels[flipped], noisy[flipped]), 1)
    assert np.abs(landed / 300 - transition).max() < 0.09  # the flips follow the matrix (300 draws a row)
    again, _ = add_class_conditional_noise(labels, 0.3, transition, seed=2)
    other, _ = add_class_conditional_noise(labels, 0.3, transition, seed=3)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)


def test_pair_flip_and_a_matrix_file_and_their_mistakes(tmp_path):
    pair = noise_transition("pair_flip", ["a", "b", "c"])
    assert np.array_equal(pair, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    matrix = tmp_path / "m.csv"
    matrix.write_text("class,b,a,c\na,3,0,1\nb,0,1,1\nc,1,1,0\n")  # columns in another order, rows not normalised
    assert np.allclose(
        noise_transition("matrix", ["a", "b", "c"], matrix), [[0, 0.75, 0.25], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    )
    matrix.write_text("class,a,b,c\na,0,1,1\nb,0,0,0\nc,1,1,0\n")
    with pytest.raises(DataError, match=r"gives no other class for \['b'\]"):
        noise_transition("matrix", ["a", "b", "c"], matrix)
    matrix.write_text("class,a,b,c\na,0,1,x\n")
    with pytest.raises(DataError, match=r"m.csv:2: expected a class name and 3 finite shares >= 0"):
        noise_transition("matrix", ["a", "b", "c"], matrix)
    with pytest.raises(DataError, match=r"FER\+'s annotators have no class \['tired'\]"):
        noise_transition("annotator", ["happy", "tired"])
    matrix.write_text("class,a,b,c\na,0,1,nan\n")  # a NaN passed every check and made every flip NaN
    with pytest.raises(DataError, match=r"m.csv:2: expected a class name and 3 finite shares"):
        noise_transition("matrix", ["a", "b", "c"], matrix)
    matrix.write_text("class,a,b,c\na,0,1,1\nb,1,0,1\na,0,2,1\nc,1,1,0\n")  # the second row of a won silently
    with pytest.raises(DataError, match=r"m.csv:4: a second row for 'a' \(.*m.csv:2 has the first\)"):
        noise_transition("matrix", ["a", "b", "c"], matrix)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"noise_rate": 0.3, "noise_matrix": "m.csv"}, "is read with noise_kind matrix only"),
        ({"noise_kind": "pair_flip"}, "noise_kind pair_flip flips no label with noise_rate 0"),
        ({"noise_kind": "matrix", "noise_matrix": "m.csv"}, "noise_kind matrix flips no label with noise_rate 0"),
    ],
)
def test_a_protocol_setting_without_what_makes_it_act_is_refused(settings, message):
    """They were ignored in silence: a run thought to be noisy trained on clean labels."""
    with pytest.raises(DataError, match=message):
        LabelProtocol(**settings)


def test_annotator_noise_through_the_datamodule_round_trips_through_its_label_file(rafdb_root, tmp_path):
    data = RAFDBDataModule(
        str(rafdb_root), protocol=LabelProtocol(noise_rate=0.5, noise_kind="annotator", noise_seed=1)
    )
    train = data.labelled("train")
    assert train.flipped.sum() == 7 * 3  # 6 images a class in the synthetic copy, half of each flipped
    assert "annotator noise 50% generated with seed 1: 21 labels flipped" in data.protocol_notes[0]
    path = write_label_file(tmp_path / "noisy.txt", train.names, train.labels, code_offset=1)
    again = RAFDBDataModule(str(rafdb_root), protocol=LabelProtocol(train_label_file=str(path))).labelled("train")
    assert np.array_equal(again.labels, train.labels) and np.array_equal(again.flipped, train.flipped)


@pytest.mark.realdata
def test_the_shipped_annotator_matrix_is_ferplus_votes():
    votes = ferplus.read_votes(real_dataset("ferplus"), "train")
    assert np.abs(ferplus.vote_confusion(list(votes.values())) - np.asarray(ferplus.VOTE_CONFUSION)).max() < 1e-4
