"""``nla fit`` then ``nla test`` end to end through the CLI, on a tiny synthetic RAF-DB written by a fixture."""

import json
from pathlib import Path

import pytest
import torch

from nla.cli import main, run_cli
from tests.conftest import CONFIGS, TINY


def fit_args(root, run_dir, *extra):
    return ["fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data.root", str(root),
            "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "3", *TINY, *extra]


def test_fit_then_test_through_the_cli(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cli = run_cli(fit_args(rafdb_root, run_dir))
    checkpoints = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in checkpoints
    assert any(n.startswith("best-acc-") for n in checkpoints) and any(n.startswith("best-mean-acc-") for n in checkpoints)
    assert (run_dir / "config.yaml").is_file()
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert set(summary["last"]["class_acc"]) == {"Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"}

    run = cli.trainer.logger.experiment  # the offline W&B run
    assert run.settings.mode in ("offline", "dryrun") and list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    logged = dict(run.summary)
    for key in ("val/acc", "val/mean_acc", "val/acc_Happiness", "train/loss_epoch", "train/naw_weight_epoch", "best/acc"):
        assert key in logged, f"{key} not logged to W&B; got {sorted(logged)}"
    assert logged["val/acc"] == pytest.approx(summary["last"]["acc"])
    figures = {p.name.rsplit("_", 2)[0] for p in (Path(run.dir) / "media" / "images" / "figures").glob("*.png")}
    assert {"naw_weights_per_class", "naw_kernel_scatter", "class_accuracy_curves", "confusion_matrix"} <= figures
    run.finish()

    capsys.readouterr()
    main(["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    printed = capsys.readouterr().out
    for key in ("test/acc", "test/mean_acc", "test/acc_Fear"):
        assert key in printed
    assert (run_dir / "config-test.yaml").is_file()  # the fit's config is kept


def test_fit_refuses_a_run_directory_that_holds_a_run(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(fit_args(rafdb_root, run_dir, "--trainer.max_epochs", "1", "--trainer.logger", "false"))
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(rafdb_root, run_dir, "--trainer.max_epochs", "1", "--trainer.logger", "false"))
    assert exit_info.value.code == 1
    assert "already holds a run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_print_config_shows_every_method_knob(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "rafdb.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    for knob in ("preset:", "lam:", "consistency_weight:", "consistency_reduction:", "jsd_direction:", "true_mean:",
                 "true_major_std:", "true_axis_ratio:", "true_scale:", "false_mean:", "false_major_std:",
                 "false_axis_ratio:", "schedule_slope:", "detach_weight:", "noise_variance:", "erasing_scale:",
                 "noise_rate:", "imbalance_factor:", "image_size:", "pipeline:"):
        assert knob in printed, knob


def test_missing_root_fails_before_training_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "rafdb.yaml"), "--trainer.default_root_dir", str(tmp_path / "r"),
              "--data.root", str(tmp_path / "nowhere"), "--trainer.logger", "false", *TINY])
    err = capsys.readouterr().err
    assert "RAF-DB root" in err and "nowhere" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("config, fixture", [("ferplus.yaml", "ferplus_root"), ("affectnet.yaml", "affectnet_root")])
def test_dataset_recipes_run_through_the_cli(config, fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    main(["fit", "--config", str(CONFIGS / config), "--config", str(CONFIGS / "noise" / "10.yaml"),
          "--data.root", str(root), "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.fast_dev_run", "1",
          "--trainer.logger", "false", *TINY])


def test_protocol_run_writes_its_training_labels_and_they_load_back(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    main(fit_args(rafdb_root, run_dir, "--config", str(CONFIGS / "imbalance" / "50.yaml"), "--trainer.max_epochs", "1",
                  "--trainer.logger", "false"))
    labels = (run_dir / "train_labels.txt").read_text().splitlines()
    assert 0 < len(labels) < 42 and labels[0].split()[0].startswith("train_")
    again = tmp_path / "again"
    main(fit_args(rafdb_root, again, "--data.train_label_file", str(run_dir / "train_labels.txt"),
                  "--trainer.max_epochs", "1", "--trainer.logger", "false"))
    assert (again / "train_labels.txt").read_text().splitlines() == labels
