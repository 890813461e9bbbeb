"""Accuracies from a confusion matrix, and the run summary that experiment and compare read."""

import json
import math

import pytest

from nla.records import Evaluation, RunSummary

NAMES = ["a", "b", "c"]


def test_accuracies_come_from_the_confusion_matrix_and_an_absent_class_has_none():
    # rows: true class; class c has no image in this split
    record = Evaluation.from_confusion([[3, 1, 0], [2, 2, 0], [0, 0, 0]], NAMES, epoch=4, excluded={"contempt": 5})
    assert record.acc == pytest.approx(5 / 8)
    assert record.class_acc == {"a": pytest.approx(0.75), "b": pytest.approx(0.5), "c": None}
    assert record.mean_acc == pytest.approx((0.75 + 0.5) / 2)  # the absent class is not a zero
    assert record.support == {"a": 4, "b": 4, "c": 0} and record.num_samples == 8
    assert Evaluation.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ValueError, match="confusion matrix for 3 classes"):
        Evaluation.from_confusion([[1, 0], [0, 1]], NAMES)


def epoch(k, acc, mean_acc, c=None):
    return Evaluation(acc, mean_acc, {"a": acc, "b": mean_acc, "c": c}, {}, [], 10, epoch=k)


def test_summary_last_best_and_mean_of_the_last_k_for_any_k(tmp_path):
    summary = RunSummary(
        [epoch(0, 0.5, 0.4), epoch(1, 0.7, 0.5, 0.2), epoch(2, 0.6, 0.6)],
        last_k=2,
        validation={"split": "test", "images": 10},
    )
    summary.add(epoch(2, 0.65, 0.62))  # a resumed run validates epoch 2 again: it replaces the first record
    assert [r.epoch for r in summary.epochs] == [0, 1, 2]
    assert summary.last.acc == 0.65 and summary.best.epoch == 1 and summary.best_by_mean_acc.epoch == 2
    assert summary.mean_last.epochs == [1, 2] and summary.mean_last.acc == pytest.approx(0.675)
    assert summary.mean_last.class_acc["c"] == pytest.approx(0.2)  # averaged over the epochs that have it
    again = RunSummary.read(summary.write(tmp_path))
    assert again.last_k == 2 and again.mean_last == summary.mean_last and again.validation["images"] == 10
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["mean_last"]["k"] == 2 and data["best"]["epoch"] == 1
    assert math.isclose(data["mean_last"]["mean_acc"], (0.5 + 0.62) / 2)
