"""NAW diagnostics: the figures are written as files, and the noise statistics are logged."""

import numpy as np
import pytest

from nla.cli import run_cli
from tests.conftest import CONFIGS, fit_args


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nla", "ce"])
def test_figures_are_written_beside_the_run(method, rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    overlays = ["--config", str(CONFIGS / "methods" / f"{method}.yaml"), "--config", str(CONFIGS / "noise" / "30.yaml")]
    csv_logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir)]
    settings = ["--data.protocol.noise_source", "generate", "--trainer.limit_train_batches", "3", *csv_logger]
    cli = run_cli(fit_args(rafdb_root, run_dir, *overlays, *settings, epochs=2, figures=True))
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    for epoch in ("000", "001"):
        for name in ("naw_weights_per_class", "naw_kernel_scatter", "naw_weights_noise", "confusion_matrix"):
            assert f"{name}-epoch{epoch}.png" in figures, (name, epoch, sorted(figures))
    assert "class_accuracy_curves.png" in figures
    assert all((run_dir / "figures" / f).stat().st_size > 5000 for f in figures)
    records = cli.model.label_noise.records
    assert [r.epoch for r in records] == [0, 1] and 0.0 <= records[-1].auroc_naw_weight <= 1.0
    (metrics,) = run_dir.glob("**/metrics.csv")
    header = metrics.read_text().splitlines()[0]
    assert (
        "noise/auroc_naw_weight" in header
        and "train/false_branch_share" in header
        and "train/prediction_entropy" in header
    )
    assert ("train/naw_weight_false_branch" in header) == (method == "nla")
    assert ("train/weight_gradient_norm" in header) == (method == "nla")


def test_sample_record_keeps_every_training_image_per_epoch(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    record = ["--trainer.callbacks+=nla.callbacks.SampleRecord", "--config", str(CONFIGS / "methods" / "ce.yaml")]
    run_cli(fit_args(rafdb_root, run_dir, *record, epochs=2))
    with np.load(run_dir / "per_sample.npz") as saved:
        weight, p_gt, p_nn, label = saved["weight"], saved["p_gt"], saved["p_nn"], saved["label"]
        predicted = saved["predicted"]
    images = 6 * 7
    assert weight.shape == p_gt.shape == label.shape == predicted.shape == (2, images)
    assert np.isfinite(weight).all() and (weight > 0).all()  # CE has no NAW: the weight NAW would give
    assert ((p_gt >= 0) & (p_gt <= 1) & (p_nn >= 0) & (p_nn <= 1) & (p_gt + p_nn <= 1 + 1e-5)).all()
    assert (label[0] == label[1]).all() and sorted(set(label[0].tolist())) == list(range(7))
    assert ((predicted >= 0) & (predicted < 7)).all()


@pytest.mark.slow
@pytest.mark.parametrize("graph", [False, True])
def test_the_epoch_means_are_the_samples_own(rafdb_root, tmp_path, graph):
    """The mechanism is summed on the device and logged once an epoch: its means are those of every training image's
    own NAW weight and branch (per_sample.npz), eager or in the graph step."""
    import csv

    run_dir = tmp_path / "run"
    record = ["--trainer.callbacks+=nla.callbacks.SampleRecord", "--config", str(CONFIGS / "methods" / "nla.yaml")]
    csv_logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir)]
    stepped = ["--model.step_graph", "true", "--model.compile_backend", "eager"] if graph else []  # dynamo's trace
    run_cli(fit_args(rafdb_root, run_dir, *record, *csv_logger, *stepped, epochs=2))
    (metrics,) = run_dir.glob("**/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/naw_weight")]
    with np.load(run_dir / "per_sample.npz") as saved:
        weight, label, predicted = saved["weight"], saved["label"], saved["predicted"]
    for row, epoch in zip(rows, (0, 1)):
        assert float(row["train/naw_weight"]) == pytest.approx(weight[epoch].mean(), rel=1e-4)
        false = predicted[epoch] != label[epoch]
        assert float(row["train/false_branch_share"]) == pytest.approx(false.mean(), abs=1e-6)
        if false.any():
            assert float(row["train/naw_weight_false_branch"]) == pytest.approx(weight[epoch][false].mean(), rel=1e-4)
    assert (len(rows) == 2 and ("train/weight_gradient_norm" in rows[0]) != graph) or graph
