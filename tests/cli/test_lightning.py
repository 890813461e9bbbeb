"""The ``nla`` command as a researcher uses it day to day, on small synthetic datasets the tests write."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nla.cli import main, run_cli
from nla.data.sources import rafdb
from tests.conftest import CONFIGS, NO_LOGGER, TINY, fit_args
from tests.fakes import write_ferplus, write_image_folder

NOISE = (
    "litlogger",
    "anonymous setting",
    "git root",
    "LeafSpec",
    "log_every_n_steps",
    "does not have many workers",
    "Symlinked",
    "Traceback",
)


def test_help_lists_every_command_and_print_config_shows_the_resolved_constants(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    printed = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "experiment", "export", "compare"):
        assert f"    {command} " in printed, command
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "rafdb.yaml"),
                "--config",
                str(CONFIGS / "presets" / "paper.yaml"),
                "--print_config",
            ]
        )
    config = yaml.safe_load(capsys.readouterr().out)
    criterion = config["model"]["criterion"]
    assert criterion["schedule_slope"] == 10.0 and criterion["consistency_reduction"] == "mean"
    assert criterion["kernels"]["false_major_std"] == pytest.approx(0.88225755)  # resolved, not null
    assert criterion["kernels"]["true_major_std"] == 0.8 and criterion["lam"] == 0.5
    assert (
        config["data"]["init_args"]["preprocessing"]["mean"] is None
    )  # the start's, else RAF-DB's own: settled when the data is
    assert config["data"]["init_args"]["augmentation"]["erasing_scale"] == [0.02, 0.3]
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "bf16-mixed on a GPU and 32-true on a CPU" in help_text and "fresh <command>[-n] folder" in help_text
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", "nla.data.RAFDBDataModule"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Probability of a horizontal flip" in help_text and "Variance of the Gaussian noise" in help_text


@pytest.mark.slow
def test_fit_shows_progress_and_then_tests_from_the_checkpoint_alone(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    wandb = ["--trainer.logger", "nla.loggers.WandbLogger", "--trainer.logger.offline", "true"]
    cli = run_cli(fit_args(rafdb_root, run_dir, *wandb, epochs=2, figures=True))
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "epoch 1/2  train loss" in printed and "epoch 2/2  train loss" in printed and "(best acc" in printed
    assert "on the CPU:" in printed and "s per training batch, so about" in printed
    assert f"run directory: {run_dir}" in printed and "test it: nla test --ckpt_path" in printed
    assert not [word for word in NOISE if word in printed], printed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1] and set(summary["last"]["class_acc"]) == set(rafdb.CLASSES)
    assert summary["validation"]["images"] == 21 and summary["validation"]["split"] == "test"
    assert summary["mean_last"]["k"] == 5 and "limit_val_batches" in summary["validation"]
    assert {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")} >= {"last.ckpt"}

    run = cli.trainer.logger.experiment  # the offline W&B run: named after the run, with the whole config
    assert run.name == "run" and run.settings.mode in ("offline", "dryrun")
    assert run.config["config"]["data"]["class_path"] == "nla.data.RAFDBDataModule"
    assert run.config["config"]["seed_everything"] == 0 and run.config["config"]["trainer"]["precision"] == "32-true"
    assert list(run_dir.glob("wandb/offline-run-*/files/nla-config.yaml"))
    logged = dict(run.summary)
    for key in (
        "val/acc",
        "val/mean_acc",
        "val/acc_Happiness",
        "train/loss_epoch",
        "train/naw_weight",
        "best/acc",
        "train/false_branch_share",
        "train/weight_gradient_norm",
        "figures/naw_kernel_scatter",
    ):
        assert key in logged, f"{key} not logged to W&B; got {sorted(logged)}"
    run.finish()

    best = next((run_dir / "checkpoints").glob("best-acc-*.ckpt"))
    main(["test", "--ckpt_path", str(best), *NO_LOGGER, "--trainer.enable_progress_bar", "false"])
    metrics = json.loads((run_dir / "test" / "metrics.json").read_text())
    assert metrics["data"] == {"class": "RAFDBDataModule", "root": str(rafdb_root.resolve()), "split": "test"}
    assert metrics["checkpoint"] == str(best.resolve())  # absolute: the file is read from elsewhere
    assert metrics["num_samples"] == 21 and set(metrics["class_acc"]) == set(rafdb.CLASSES)
    assert (run_dir / "test" / "config.yaml").is_file() and (
        run_dir / "test" / "figures" / "confusion_matrix.png"
    ).is_file()
    assert "test: acc" in capsys.readouterr().out


def test_nlas_warnings_are_one_line_and_the_libraries_keep_their_source(tmp_path, monkeypatch):
    import warnings

    import nla
    from nla.cli import format_warning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    with pytest.raises(SystemExit):
        main(["--help"])
    assert warnings.formatwarning is format_warning
    inside = str(Path(nla.__file__).parent / "callbacks.py")
    message = UserWarning("1 image(s) could not be predicted")
    assert format_warning(message, UserWarning, inside, 359) == "nla: warning: 1 image(s) could not be predicted\n"
    outside = format_warning(UserWarning("deprecated"), UserWarning, str(tmp_path / "lib.py"), 7)
    assert outside.startswith(f"{tmp_path / 'lib.py'}:7: UserWarning: deprecated")


def test_testing_on_another_dataset_matches_classes_by_name(trained_run, tmp_path, capsys):
    """A 7-class RAF-DB model tested on 8-class FER+: the classes are matched by name, contempt is left out."""
    ferplus = write_ferplus(tmp_path / "ferplus", per_class=3, size=24)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    main(
        [
            "test",
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
            "--data",
            "nla.data.FERPlusDataModule",
            "--data.root",
            str(ferplus),
            *NO_LOGGER,
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert metrics["excluded"] == {"contempt": 3} and metrics["num_samples"] == 21  # 24 test images less contempt's
    assert set(metrics["class_acc"]) == set(rafdb.CLASSES)  # in the model's names
    assert all(v == 3 for v in metrics["support"].values())
    printed = capsys.readouterr()
    assert "on 21 images; left out, the model has no such class: {'contempt': 3}" in printed.out

    numbered = write_image_folder(
        tmp_path / "numbered", classes=("0", "1", "2"), per_class=2, size=24, splits=("test",)
    )
    with pytest.raises(SystemExit):
        main(
            [
                "test",
                "--ckpt_path",
                str(run / "checkpoints" / "last.ckpt"),
                "--data",
                "nla.data.ImageFolderDataModule",
                "--data.root",
                str(numbered),
                *NO_LOGGER,
            ]
        )
    err = capsys.readouterr().err
    assert "none of the data's classes ['0', '1', '2'] matches a class of the model" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_face_folder_without_splits_trains_with_a_grouped_fold(tmp_path):
    root = write_image_folder(tmp_path / "ck", classes=("anger", "happy", "sad"), per_class=12, size=24, splits=("",))
    for path in sorted(root.rglob("*.png")):  # CK+-style names: the subject first
        path.rename(path.with_name(f"S{int(path.stem) % 4:03d}_{path.stem}.png"))
    run_dir = tmp_path / "run"
    main(
        [
            "fit",
            "--data",
            "nla.data.ImageFolderDataModule",
            "--data.root",
            str(root),
            "--data.holdout.num_folds",
            "4",
            "--data.holdout.fold",
            "1",
            "--data.holdout.group_pattern",
            r"S(\d+)_",
            "--trainer.default_root_dir",
            str(run_dir),
            "--trainer.max_epochs",
            "1",
            *TINY,
            *NO_LOGGER,
        ]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation"]["split"] == "valid" and summary["last"]["support"] == {
        "anger": 3,
        "happy": 3,
        "sad": 3,
    }
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["init_args"]["class_names"] is None  # taken from the folders
    checkpoint = __import__("torch").load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["anger", "happy", "sad"]
    assert checkpoint["datamodule_hyper_parameters"]["preprocessing"]["mean"] is not None  # measured on its images


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, fixture, split, classes",
    [("ferplus.yaml", "ferplus_root", "valid", 8), ("affectnet.yaml", "affectnet_root", "test", 7)],
)
def test_dataset_recipes_train_on_their_data(config, fixture, split, classes, request, tmp_path):
    run_dir = tmp_path / "run"
    main(
        fit_args(
            request.getfixturevalue(fixture), run_dir, "--config", str(CONFIGS / "noise" / "10.yaml"), config=config
        )
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation"]["split"] == split and len(summary["last"]["class_acc"]) == classes
    labels = (run_dir / "train_labels.txt").read_text().splitlines()
    assert len(labels) == classes * 3 and len(labels) > 0  # the generated noise's labels, one per training image


@pytest.mark.slow
def test_protocol_run_writes_its_training_labels_and_they_load_back(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    main(fit_args(rafdb_root, run_dir, "--config", str(CONFIGS / "imbalance" / "50.yaml")))
    labels = (run_dir / "train_labels.txt").read_text().splitlines()
    assert 0 < len(labels) < 42 and labels[0].split()[0].startswith("train_")
    again = tmp_path / "again"
    main(fit_args(rafdb_root, again, "--data.protocol.train_label_file", str(run_dir / "train_labels.txt")))
    assert (again / "train_labels.txt").read_text().splitlines() == labels


def test_a_runs_numbers_record_the_versions_device_and_threads_they_came_from(trained_run, tmp_path):
    """Two runs of one config and seed that disagree could not be told apart: nothing said what they ran on."""
    import lightning
    import torch

    import nla

    environment = json.loads((trained_run / "summary.json").read_text())["environment"]
    assert environment["torch"] == torch.__version__
    assert environment["lightning"] == lightning.__version__ and environment["nla"] == nla.__version__
    assert environment["threads"] == torch.get_num_threads() and environment["devices"] == 1
    assert environment["device"] == ("cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0))
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    main(["validate", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), *NO_LOGGER])
    assert json.loads((run_dir / "validate" / "metrics.json").read_text())["environment"] == environment


@pytest.mark.slow
def test_the_commands_print_no_warning_that_tells_the_user_nothing(rafdb_root, tmp_path):
    """As a user runs them, in a process of their own, with every default (W&B offline, the progress bar)."""

    run_dir = tmp_path / "run"
    settings = ["--model.backbone", "test_resnet", "--data.preprocessing.image_size", "32", "--data.batch_size", "8"]
    fit = [
        "fit",
        "--config",
        str(CONFIGS / "rafdb.yaml"),
        "--data.root",
        str(rafdb_root),
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(run_dir),
        *settings,
    ]
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    evaluations = [["test", "--ckpt_path", checkpoint], ["label-issues", "--ckpt_path", checkpoint]]

    def start(command):
        return subprocess.Popen(
            [sys.executable, "-m", "nla", *command],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**__import__("os").environ, "WANDB_MODE": "offline"},
        )

    fitted = start(fit)
    outputs = [(fitted.communicate()[0], fitted.returncode)]
    evaluating = [start(command) for command in evaluations]  # side by side
    outputs += [(process.communicate()[0], process.returncode) for process in evaluating]
    for output, code in outputs:
        assert code == 0, output[-3000:]
        noisy = [
            line
            for line in output.splitlines()
            if any(word in line for word in (*NOISE, "Warning", "warn(")) or re.search(r"\.py:\d+: ", line)
        ]
        assert not noisy, noisy
    assert (run_dir / "test" / "metrics.json").is_file() and (run_dir / "label-issues" / "label_issues.csv").is_file()
