"""The same seed gives the same run on the CPU, and DDP over two processes gives one process's metrics."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nla.cli import main, run_cli
from tests.conftest import REPO, fit_args


@pytest.mark.slow
@pytest.mark.parametrize("pipeline, workers", [("albumentations", "2"), ("cached", "0")])
def test_same_seed_gives_identical_metrics_on_the_cpu(pipeline, workers, rafdb_root, tmp_path):
    def run(name):
        cli = run_cli(
            fit_args(
                rafdb_root,
                tmp_path / name,
                "--trainer.deterministic",
                "true",
                "--seed_everything",
                "7",
                "--data.pipeline",
                pipeline,
                "--data.num_workers",
                workers,
                epochs=2,
            )
        )
        return json.loads((tmp_path / name / "summary.json").read_text()), cli.model.model.state_dict()

    (first, weights_a), (second, weights_b) = run("a"), run("b")
    assert first == second
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(rafdb_root, tmp_path):
    run_dir = tmp_path / "ddp"
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    noise = ["--data.protocol.noise_source", "generate", "--data.protocol.noise_rate", "0.3"]
    csv_logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir)]
    record = [*noise, "--trainer.callbacks+=nla.callbacks.SampleRecord", *csv_logger]
    fit = subprocess.run(
        [sys.executable, "-m", "nla", *fit_args(rafdb_root, run_dir, "--data.pipeline", "cached", *record, *ddp)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "summary.json").is_file()
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    # Each process trained on its own half: 21 images, 3 batches of 8 (one process alone would take 6).
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    # The label-noise figures, the per-image record and the epoch's mechanism means hold both processes' images.
    (epoch,) = json.loads((run_dir / "summary.json").read_text())["label_noise"]
    assert (epoch["images"], epoch["flipped"]) == (42, 13)
    with np.load(run_dir / "per_sample.npz") as saved:
        weight, label, predicted = saved["weight"][0], saved["label"][0], saved["predicted"][0]
    assert np.isfinite(weight).all() and (label >= 0).all()
    (metrics,) = run_dir.glob("**/metrics.csv")
    (row,) = [r for r in csv.DictReader(metrics.open()) if r.get("train/naw_weight")]
    assert float(row["train/naw_weight"]) == pytest.approx(weight.mean(), rel=1e-4)
    assert float(row["train/false_branch_share"]) == pytest.approx((predicted != label).mean(), abs=1e-6)

    two = subprocess.run(
        [sys.executable, "-m", "nla", "test", "--ckpt_path", ckpt, "--trainer.logger", "false", *ddp],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    main(["test", "--ckpt_path", ckpt, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    # Both processes of the distributed test wrote into one folder, "test"; the single process into "test-1".
    assert sorted(p.name for p in run_dir.glob("test*")) == ["test", "test-1"]
    distributed, single = (json.loads((run_dir / name / "metrics.json").read_text()) for name in ("test", "test-1"))
    assert distributed["num_samples"] == single["num_samples"] == 21
    assert (distributed["environment"]["devices"], single["environment"]["devices"]) == (2, 1)
    for key in ("acc", "mean_acc", "class_acc", "confusion"):
        assert distributed[key] == single[key], key


@pytest.mark.slow
def test_a_non_finite_loss_in_one_ddp_process_stops_both_with_one_line(rafdb_root, tmp_path):
    """Process 1's second step has a NaN loss, process 0's does not: both skip it and stop with the same line (before,
    process 0 went on and died on the closed connection)."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    poison = ["--trainer.callbacks+=tests.helpers.PoisonBatch", "--trainer.callbacks.epoch=0"]
    poison += ["--trainer.callbacks.rank=1", "--trainer.log_every_n_steps", "1"]
    args = fit_args(rafdb_root, tmp_path / "ddp", "--data.pipeline", "cached", *poison, *ddp)
    fit = subprocess.run([sys.executable, "-m", "nla", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    line = "nla: error: non-finite loss at epoch 0, step 1: classification=nan, consistency=nan."
    assert fit.returncode == 1 and fit.stderr.count(line) == 2, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert "Traceback" not in fit.stderr
