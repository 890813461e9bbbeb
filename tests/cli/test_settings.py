"""Every setting means what it says: an option given one way is not read as another (an integer as a fraction, one
start as another, a path as a literal folder, an option as nothing at all)."""

import contextlib
import os

import pytest

from nla.cli import main, run_cli
from nla.records import RunSummary
from tests.conftest import fit_args
from tests.helpers import fails, says


def test_an_integer_batch_limit_is_a_number_of_batches(rafdb_root, tmp_path, capsys):
    """Lightning annotates the limits Union[float, int]: its parser read 1 as 1.0, every batch."""
    run = tmp_path / "run"
    limits = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    cli = run_cli(fit_args(rafdb_root, run, *limits, epochs=2))
    assert cli.trainer.global_step == 2  # one batch an epoch, of the six
    assert [record.num_samples for record in cli.model.validation_history] == [8, 8]  # one batch of 21 test images
    assert "limit_train_batches: 1\n" in (run / "config.yaml").read_text()
    with pytest.raises(SystemExit):
        main([*fit_args(rafdb_root, tmp_path / "other"), "--trainer.limit_train_batches", "0.5", "--print_config"])
    assert "limit_train_batches: 0.5\n" in capsys.readouterr().out  # a fraction stays a fraction


def test_an_integer_batch_limit_in_a_config_file_too(rafdb_root, tmp_path):
    overlay = tmp_path / "limits.yaml"
    overlay.write_text("trainer:\n  limit_train_batches: 2\n  limit_val_batches: 0.5\n")
    cli = run_cli(fit_args(rafdb_root, tmp_path / "run", "--config", str(overlay)))
    assert cli.trainer.global_step == 2 and cli.trainer.limit_train_batches == 2
    assert cli.trainer.limit_val_batches == pytest.approx(0.5)


# --- where the weights start: what a run records is what it loaded ---------------------------------------------


def test_a_face_network_asked_for_imagenet_weights_is_refused(rafdb_root, tmp_path, capsys):
    """timm's pre-trained weights of dlib_resnet29 are dlib's face network: the run loaded them and recorded
    'imagenet'."""
    start = ["--model.backbone", "dlib_resnet29", "--model.pretrained", "imagenet"]
    err = fails([*fit_args(rafdb_root, tmp_path / "run"), *start], capsys)
    says(err, "--model.pretrained imagenet: dlib_resnet29 has no ImageNet weights", "--model.pretrained face")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("weights", ["fifo", "dat"])
def test_weights_that_are_no_file_of_weights_are_one_line(weights, rafdb_root, tmp_path, capsys):
    path = tmp_path / f"weights.{weights}"
    os.mkfifo(path) if weights == "fifo" else path.write_bytes(b"dlib's format, not PyTorch's")
    start = ["--model.pretrained", "imagenet", "--model.pretrained_weights", str(path)]
    err = fails([*fit_args(rafdb_root, tmp_path / "run"), *start], capsys)
    expected = "is not a regular file" if weights == "fifo" else "cannot be read as a PyTorch file"
    says(err, f"pre-trained weights file {str(path)!r} {expected}")


def test_imagenet_weights_offline_stop_the_run_before_the_data_is_read(rafdb_root, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    from nla.backbones import starts
    from nla.data.base import FERDataModule

    starts.imagenet_weights.cache_clear()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(FERDataModule, "setup", lambda *args, **kwargs: pytest.fail("the data was read first"))
    err = fails([*fit_args(rafdb_root, tmp_path / "run"), "--model.pretrained", "imagenet"], capsys)
    says(err, "--model.pretrained imagenet: timm could not fetch test_resnet's weights", "HF_HUB_OFFLINE")
    starts.imagenet_weights.cache_clear()


@pytest.mark.slow
def test_a_path_under_the_home_folder_is_one_folder_for_every_part_of_a_run(rafdb_root, tmp_path, monkeypatch):
    """--trainer.default_root_dir '~/runs/t': the run went under the home folder, its lock into a literal ./~/runs/t."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    cli = run_cli(fit_args(rafdb_root, "~/runs/t"))
    run = tmp_path / "home" / "runs" / "t"
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert cli.trainer.default_root_dir == str(run) and not (tmp_path / "~").exists()
    test = run_cli(["test", "--ckpt_path", "~/runs/t/checkpoints/last.ckpt", "--trainer.logger", "false"])
    assert test.trainer.default_root_dir == str(run / "test")


def test_a_resume_that_switches_the_graph_step_is_refused(rafdb_root, tmp_path, capsys):
    """Lightning counts the graph step's optimiser steps apart from the eager loop's: a switched resume counted from
    0 again and overshot max_steps (or stopped short, switched back)."""
    run = tmp_path / "run"
    run_cli(fit_args(rafdb_root, run))
    graph = ["--model.step_graph", "true", "--model.compile_backend", "eager", "--ckpt_path", "last"]
    err = fails([*fit_args(rafdb_root, run, epochs=2), *graph], capsys)
    says(err, f"cannot resume {str(run)!r} with model.step_graph=True: the run was trained with False", "max_steps")


def test_a_callbacks_list_in_a_config_keeps_what_every_run_writes(rafdb_root, tmp_path, capsys):
    """trainer.callbacks in a YAML replaced nla's list: no last.ckpt, no summary.json, no figures, and no word."""
    overlay = tmp_path / "callbacks.yaml"
    overlay.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "      init_args: {monitor: val/acc, mode: max}\n"
    )
    run = tmp_path / "run"
    cli = run_cli([*fit_args(rafdb_root, run, figures=True), "--config", str(overlay)])
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert [type(c).__name__ for c in cli.trainer.callbacks].count("EarlyStopping") == 1
    err = capsys.readouterr().err
    says(err, "trainer.callbacks replaces nla's callbacks", "last.ckpt, summary.json", "left out:", "NAWDiagnostics")


def test_a_fit_stopped_by_ctrl_c_writes_the_summary_of_its_epochs(rafdb_root, tmp_path, capsys):
    """A SIGINT'd fit wrote no summary.json: nla compare could not show it, though last.ckpt held its history."""
    run = tmp_path / "run"
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        run_cli([*fit_args(rafdb_root, run, epochs=3), "--trainer.callbacks+=tests.helpers.CtrlC"])
    summary = RunSummary.read(run)
    assert not summary.finished and [r.epoch for r in summary.epochs] == [0]
    capsys.readouterr()
    main(["compare", str(run)])
    assert f"| {run} (stopped after epoch 1) | last epoch | 1 |" in capsys.readouterr().out
    from nla.experiment.runner import cell_state

    assert cell_state(run) == "resume"  # a grid resumes it rather than counting it done


@pytest.mark.slow
def test_an_evaluation_of_a_run_without_a_logger_starts_none(rafdb_root, tmp_path):
    """nla test started an offline W&B run for a training run made with --trainer.logger false."""
    run = tmp_path / "run"
    run_cli(fit_args(rafdb_root, run))  # tiny.yaml: --trainer.logger false
    test = run_cli(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert test.trainer.loggers == [] and not list((run / "test").rglob("wandb"))
    assert (run / "test" / "metrics.json").is_file()


@pytest.mark.slow
def test_a_start_from_an_nla_checkpoint_keeps_its_normalisation(rafdb_root, folder_root, tmp_path):
    """--model.pretrained_weights from an nla checkpoint trained with other normalisation took the new data's."""
    first = tmp_path / "folders"
    folders = ["--data", "nla.data.ImageFolderDataModule", "--data.root", str(folder_root)]
    run_cli([*fit_args(rafdb_root, first), *folders])
    trained = RunSummary.read(first).input
    second = tmp_path / "rafdb"
    run_cli([*fit_args(rafdb_root, second), "--model.pretrained_weights", str(first / "checkpoints" / "last.ckpt")])
    assert RunSummary.read(second).input["mean"] == pytest.approx(trained["mean"])
    assert RunSummary.read(second).input["std"] == pytest.approx(trained["std"])
    from nla.data import RAFDBDataModule

    assert trained["mean"] != pytest.approx(list(RAFDBDataModule.dataset_mean))  # the new data's would differ
