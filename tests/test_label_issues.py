"""``nla label-issues``: NAW's ranking of the training labels that are probably wrong, and its measure against
labels known to have been changed."""

import csv
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from nla.cli import main
from nla.label_issues import choose_suspects, cleaned_labels, first_per_class, rank, scores_against_truth
from tests.conftest import NO_LOGGER, fit_args


def test_confidently_wrong_predictions_rank_first_and_confident_right_ones_last():
    probs = torch.tensor(
        [
            [0.90, 0.05, 0.05],  # label 0, predicted 0 with confidence: the least suspicious
            [0.40, 0.35, 0.25],  # label 0, predicted 0 barely
            [0.30, 0.50, 0.20],  # label 0, predicted 1: a false prediction near the false kernel
            [0.02, 0.96, 0.02],  # label 0, predicted 1 with confidence: the most suspicious
        ]
    )
    ranking = rank(probs, torch.tensor([0, 0, 0, 0]))
    assert ranking.order.tolist() == [3, 2, 1, 0]
    assert ranking.suggested.tolist() == [0, 0, 1, 1] and ranking.prediction_true.tolist() == [True, True, False, False]
    assert ranking.loss[3] == pytest.approx(-np.log(0.02), rel=1e-6)
    # The confidently right sample has a low NAW weight too: the weight alone would rank it as suspicious.
    assert ranking.weight[0] < ranking.weight[1]


def test_scores_against_known_flips():
    score = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    flipped = np.array([True, False, False, True, False])
    scores = scores_against_truth(score, flipped)
    assert scores["flagged"] == 2 and scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert scores["auroc"] == pytest.approx(5 / 6)


@pytest.mark.slow
def test_label_issues_through_the_cli(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(
        fit_args(
            rafdb_root,
            run_dir,
            "--data.protocol.noise_rate",
            "0.3",
            "--data.protocol.noise_source",
            "generate",
            epochs=2,
        )
    )
    main(
        [
            "label-issues",
            "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt"),
            "--top",
            "8",
            *NO_LOGGER,
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    folder = run_dir / "label-issues"
    rows = list(csv.DictReader(open(folder / "label_issues.csv")))
    assert [int(r["rank"]) for r in rows] == list(range(1, 43))  # every training image, most suspicious first
    labels = {line.split()[0]: int(line.split()[1]) for line in (run_dir / "train_labels.txt").read_text().splitlines()}
    names = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    assert all(names[labels[r["name"]] - 1] == r["given_label"] for r in rows)  # the noisy labels it was trained on
    assert sum(r["label_was_changed"] == "True" for r in rows) == round(0.3 * 42)
    agreeing = [r["prediction_agrees"] == "True" for r in rows]
    assert agreeing == sorted(agreeing)  # the model's disagreements come first
    truth = json.loads((folder / "label_issues_vs_truth.json").read_text())
    assert truth["labels_changed"] == 13 and 0 <= truth["nla (NAW) ranking, top flipped count"]["auroc"] <= 1
    assert "cleanlab find_label_issues (its own count)" in truth
    assert (folder / "label_issues.png").stat().st_size > 10_000
    assert "42 training images ranked" in capsys.readouterr().out
    shutil.rmtree(folder)


def test_cleaning_drops_or_relabels_the_first_suspects():
    labels, suggested = np.array([0, 1, 2, 0, 1]), np.array([1, 1, 0, 0, 2])
    order = np.array([2, 4, 0, 1, 3])  # most suspicious first
    kept, dropped = cleaned_labels(labels, suggested, order[:2], "drop")
    assert kept.tolist() == [0, 1, 3] and dropped.tolist() == [0, 1, 0]
    kept, relabelled = cleaned_labels(labels, suggested, order[:2], "relabel")
    assert kept.tolist() == [0, 1, 2, 3, 4] and relabelled.tolist() == [0, 1, 0, 0, 2]


def test_the_first_of_each_class_in_its_own_count():
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    order = np.array([6, 3, 0, 5, 4, 1, 2])
    chosen = first_per_class(order, labels, np.array([1, 2, 0]))
    assert chosen.tolist() == [3, 0, 4]  # class 0: image 0; class 1: images 3 and 4; class 2: none


def test_confident_learning_decides_how_many_of_each_class_and_naw_which():
    """A weak model contradicts many right labels of a class it rarely predicts: ``contradicted`` cleans them all,
    ``confident_learning`` only as many as cleanlab's per-class estimate, the most suspicious by NAW first."""
    pytest.importorskip("cleanlab")
    generator = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 60, 20])
    probs = generator.dirichlet([1, 1, 1], size=len(labels)) * 0.2
    probs[np.arange(len(labels)), labels] += 0.8  # right and confident: 0.8 or more on the label
    flipped = np.array([3, 9, 70, 75])
    probs[flipped] = [[0.02, 0.9, 0.08], [0.02, 0.08, 0.9], [0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]
    probs[120:] = generator.dirichlet([4, 4, 1], size=20)  # class 2: the model barely learned it
    probs /= probs.sum(1, keepdims=True)
    ranking = rank(torch.tensor(probs), torch.tensor(labels))
    contradicted = choose_suspects(ranking, probs, labels, "contradicted")
    confident = choose_suspects(ranking, probs, labels, "confident_learning")
    from cleanlab.filter import find_label_issues

    expected = np.bincount(labels[find_label_issues(labels, probs)], minlength=3)
    assert np.bincount(labels[confident], minlength=3).tolist() == expected.tolist()
    assert set(flipped) <= set(confident.tolist()) and set(flipped) <= set(contradicted.tolist())
    assert (labels[contradicted] == 2).sum() > expected[2]  # the class the model barely predicts loses more
    position = {int(i): k for k, i in enumerate(ranking.order)}
    for c in range(3):
        ranked = sorted((i for i in range(len(labels)) if labels[i] == c), key=position.get)
        assert sorted(confident[labels[confident] == c].tolist()) == sorted(ranked[: expected[c]])
    assert choose_suspects(ranking, probs, labels, 5).tolist() == ranking.order[:5].tolist()


@pytest.mark.slow
def test_cleaned_labels_train_a_new_model(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(
        fit_args(
            rafdb_root,
            run_dir,
            "--data.protocol.noise_rate",
            "0.3",
            "--data.protocol.noise_source",
            "generate",
            epochs=1,
        )
    )
    quiet = [*NO_LOGGER, "--trainer.enable_progress_bar", "false"]
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    main(["label-issues", "--ckpt_path", ckpt, "--write_labels", "drop", "--suspects", "5", *quiet])
    dropped = run_dir / "label-issues" / "cleaned_labels.txt"
    assert "cleaned labels (drop: 5 images, 37 in the file)" in capsys.readouterr().out
    lines = dropped.read_text().splitlines()
    suspects = [r["name"] for r in csv.DictReader(open(run_dir / "label-issues" / "label_issues.csv"))][:5]
    assert len(lines) == 37 and not {line.split()[0] for line in lines} & set(suspects)
    main(["label-issues", "--ckpt_path", ckpt, "--write_labels", "relabel", "--suspects", "5", *quiet])
    relabelled = run_dir / "label-issues-1" / "cleaned_labels.txt"
    assert len(relabelled.read_text().splitlines()) == 42
    if importlib.util.find_spec("cleanlab"):
        main(
            ["label-issues", "--ckpt_path", ckpt, "--write_labels", "drop", "--suspects", "confident_learning", *quiet]
        )
        counted = int(capsys.readouterr().out.split("cleaned labels (drop: ")[1].split(" images")[0])
        assert len((run_dir / "label-issues-2" / "cleaned_labels.txt").read_text().splitlines()) == 42 - counted
    with pytest.warns(UserWarning, match=r"cleaned_labels\.txt keeps no image of \['.*'\]: a fit on it stops"):
        main(["label-issues", "--ckpt_path", ckpt, "--write_labels", "drop", "--suspects", "40", *quiet])
    retrained = tmp_path / "retrained"
    main(fit_args(rafdb_root, retrained, "--data.protocol.train_label_file", str(dropped), epochs=1))
    assert json.loads((retrained / "summary.json").read_text())["last"]["epoch"] == 0
    assert (retrained / "train_labels.txt").read_text() == dropped.read_text()  # the 37 images, their labels
