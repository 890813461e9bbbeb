"""Faults met through the CLI as a careful user met them: no run's files lost or mislabelled, every fault one line."""

import json
import os
import shutil

import pytest
import torch
import yaml

from nla.cli import main
from nla.rundir import RunDirectoryError, RunLock
from tests.conftest import CONFIGS, TINY, fit_args
from tests.helpers import fails, says


def snapshot(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".nla.lock"}


# --- runs overwritten or recorded wrongly ------------------------------------------------------------------


def test_another_runs_checkpoint_cannot_write_into_a_finished_run(trained_run, tmp_path, capsys):
    finished = tmp_path / "finished"
    shutil.copytree(trained_run, finished)
    before = snapshot(finished)
    other = trained_run / "checkpoints" / "last.ckpt"
    err = fails(fit_args(tmp_path, finished, "--ckpt_path", str(other), epochs=3), capsys)
    assert "already holds a run" in err and "directory of its own" in err
    assert snapshot(finished) == before


def test_two_fits_cannot_share_a_directory(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir).acquire()  # another process's fit, still running
    try:
        err = fails(fit_args(rafdb_root, run_dir), capsys)
    finally:
        lock.release()
    assert "is in use by process" in err and not (run_dir / "config.yaml").exists()


def test_a_failed_start_removes_only_the_folders_it_created_and_wrote_nothing_into(tmp_path):
    """A failed fit left its run directory holding only the lock file; a folder the user made stays."""
    lock = RunLock(tmp_path / "runs" / "a" / "run").acquire()
    lock.release(tidy=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    lock = RunLock(tmp_path / "mine" / "run").acquire()
    lock.release(tidy=True)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and not any((tmp_path / "mine").iterdir())
    lock = RunLock(tmp_path / "written").acquire()
    (tmp_path / "written" / "config.yaml").write_text("model: {}\n")
    lock.release(tidy=True)
    assert sorted(p.name for p in (tmp_path / "written").iterdir()) == [".nla.lock", "config.yaml"]


def test_a_lock_file_removed_by_its_holder_is_not_locked_again(tmp_path, monkeypatch):
    """A process that opened the lock file just before a failed fit removed it must lock the new file, or two
    fits would hold 'the' lock at once."""
    first = RunLock(tmp_path / "run").acquire()
    stale = os.open(tmp_path / "run" / ".nla.lock", os.O_RDWR)
    first.release(tidy=True)
    opened = []
    real_open = os.open

    def open_stale_once(path, flags, mode=0o777):
        if not opened:
            opened.append(path)
            return stale  # what the second process opened before the file was removed
        return real_open(path, flags, mode)

    monkeypatch.setattr("nla.rundir.os.open", open_stale_once)
    second = RunLock(tmp_path / "run").acquire()
    try:
        third = RunLock(tmp_path / "run")
        with pytest.raises(RunDirectoryError, match="is in use by process"):
            third.acquire()
    finally:
        second.release()
    assert opened and (tmp_path / "run" / ".nla.lock").is_file()


def test_a_fit_that_never_trained_does_not_block_the_fixed_command(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    fails(fit_args(rafdb_root, run_dir, "--model.num_classes", "5"), capsys)  # fails after its config is written
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints").exists()
    main(fit_args(rafdb_root, run_dir))
    assert (run_dir / "summary.json").is_file()
    assert yaml.safe_load((run_dir / "config-unstarted.yaml").read_text())["model"]["num_classes"] == 5
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["num_classes"] is None


def test_a_fit_with_checkpointing_off_trains_and_says_it_wrote_no_checkpoint(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(fit_args(rafdb_root, run_dir, "--trainer.enable_checkpointing", "false"))
    out = capsys.readouterr().out
    assert (run_dir / "summary.json").is_file() and not (run_dir / "checkpoints").exists()
    assert "no checkpoint written (--trainer.enable_checkpointing false)" in out and "nla test" not in out


def test_resuming_nothing_says_where_it_looked(rafdb_root, tmp_path, capsys):
    err = fails(fit_args(rafdb_root, tmp_path / "run", "--ckpt_path", "last"), capsys)
    assert f"there is no run to resume in '{tmp_path / 'run'}'" in err and "last.ckpt" in err


@pytest.mark.slow
def test_a_resume_applies_a_new_learning_rate_and_refuses_a_new_model_or_data(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(fit_args(rafdb_root, run_dir, epochs=1))
    before = snapshot(run_dir)
    for change, setting in (
        (
            ["--config", str(CONFIGS / "noise" / "20.yaml"), "--data.protocol.noise_source", "generate"],
            "data.protocol.noise_rate=0.2",
        ),
        (["--model.backbone", "resnet10t"], "model.backbone='resnet10t'"),
        (["--data.preprocessing.image_size", "48"], "data.preprocessing.image_size=48"),
    ):
        err = fails(fit_args(rafdb_root, run_dir, *change, "--ckpt_path", "last", epochs=2), capsys)
        assert f"cannot resume {str(run_dir)!r} with {setting}: the run was trained with" in err
    assert snapshot(run_dir) == before
    main(
        fit_args(
            rafdb_root, run_dir, "--model.lr", "0.00001", "--model.lr_gamma", "0.5", "--ckpt_path", "last", epochs=2
        )
    )
    note = next(line for line in capsys.readouterr().err.splitlines() if "changed settings" in line)
    assert note.endswith("model.lr 0.0001 -> 1e-05; model.lr_gamma 0.9 -> 0.5")  # and nothing it did not change
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    group = final["optimizer_states"][0]["param_groups"][0]
    # Epoch 0 ran at 1e-4 (then x0.9); epoch 1 at the new rate, 1e-5 x 0.9, then x0.5 once it ended.
    assert group["lr"] == pytest.approx(1e-5 * 0.9 * 0.5) and final["hyper_parameters"]["lr"] == pytest.approx(1e-5)
    assert yaml.safe_load((run_dir / "config-fit.yaml").read_text())["model"]["lr"] == pytest.approx(1e-5)


@pytest.mark.slow
def test_a_resume_reads_no_pretrained_weights_and_keeps_their_record(trained_run, rafdb_root, tmp_path, capsys):
    """The checkpoint holds the weights: a run resumed where the file it started from is gone must not fail."""
    weights, run_dir = tmp_path / "start.ckpt", tmp_path / "run"
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", weights)
    started = ["--model.pretrained_weights", str(weights)]
    main(fit_args(rafdb_root, run_dir, *started, epochs=1))
    weights.unlink()
    main(fit_args(rafdb_root, run_dir, *started, "--ckpt_path", "last", epochs=2))
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 1 and final["hyper_parameters"]["pretrained_weights"] == str(weights)
    assert yaml.safe_load((run_dir / "config-fit.yaml").read_text())["model"]["pretrained_weights"] == str(weights)
    assert "start.ckpt" in fails(fit_args(rafdb_root, tmp_path / "new", *started), capsys)  # a new run reads it


@pytest.mark.slow
def test_weights_that_blow_up_are_never_checkpointed_and_the_advice_works(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    blow_up = ["--trainer.callbacks+=tests.helpers.BlowUpWeights", "--trainer.callbacks.epoch", "1"]
    err = fails(fit_args(rafdb_root, run_dir, *blow_up, epochs=3), capsys)
    assert (
        "weights became non-finite" in err and "at epoch 1" in err and "--ckpt_path last and a lower --model.lr" in err
    )
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(
        torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point()
    )
    main(fit_args(rafdb_root, run_dir, "--ckpt_path", "last", "--model.lr", "0.00005", epochs=3))  # the advice given
    assert json.loads((run_dir / "summary.json").read_text())["last"]["epoch"] == 2


def test_a_non_finite_loss_stops_before_the_step(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    err = fails(
        fit_args(
            tmp_path,
            run_dir,
            "--data.root",
            str(trained_run.parent.parent),
            "--model.criterion.lam",
            ".nan",
            "--ckpt_path",
            "last",
            epochs=3,
        ),
        capsys,
    )
    assert "criterion lam=nan must be a finite number" in err  # refused before any step
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.slow
def test_evaluation_commands_never_overwrite_a_fits_outputs(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = snapshot(run_dir)
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    for command in ("validate", "test", "test"):
        main([command, "--ckpt_path", ckpt, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} >= {"validate", "test", "test-1"}
    assert (run_dir / "validate" / "figures" / "confusion_matrix.png").is_file()
    assert json.loads((run_dir / "validate" / "metrics.json").read_text())["data"]["split"] == "test"
    assert {k: v for k, v in snapshot(run_dir).items() if k in before} == before


def test_checkpoints_follow_the_umask_like_every_other_output(trained_run):
    config_mode = (trained_run / "config.yaml").stat().st_mode & 0o777
    assert {p.stat().st_mode & 0o777 for p in (trained_run / "checkpoints").glob("*.ckpt")} == {config_mode}


# --- one line, not a wall -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "FERPlusDataModule",
        pytest.param("AffectNetDataModule", marks=pytest.mark.slow),
        pytest.param("ImageFolderDataModule", marks=pytest.mark.slow),
    ],
)
def test_a_data_root_that_is_no_folder_is_named_first(data, tmp_path, capsys):
    """Each dataset's own file check named a file under the root, or (a folder of images) first announced a
    hold-out for a root that is not there."""
    absent = str(tmp_path / "absent")
    fit = ["fit", "--data", data, "--data.root", absent, *TINY, "--trainer.default_root_dir", str(tmp_path / "run")]
    err = fails(fit, capsys)
    assert err.index(data) < err.index(f"--data.root {absent!r}") < err.index("does not exist or is not a folder")


@pytest.mark.parametrize(
    "option, message",
    [
        (["--data.protocol.noise_rate", "-0.1"], "noise_rate -0.1 is outside [0, 1)"),
        pytest.param(["--data.protocol.noise_rate", "1.5"], "noise_rate 1.5 is outside [0, 1)", marks=pytest.mark.slow),
        pytest.param(
            ["--data.protocol.imbalance_factor", "0.5"], "imbalance_factor 0.5 is below 1", marks=pytest.mark.slow
        ),
        pytest.param(["--data.preprocessing.image_size", "4"], "image_size 4 is too small", marks=pytest.mark.slow),
        pytest.param(["--model.lr", "-1"], "model.lr=-1.0 must be a finite positive number", marks=pytest.mark.slow),
        (["--model.lr", "nan"], "model.lr=nan must be a finite positive number"),
        (["--seed_everything", "-1"], "--seed_everything -1 is outside 0..4294967295, the seeds numpy accepts"),
        pytest.param(["--model.lr", "inf"], "model.lr=inf must be a finite positive number", marks=pytest.mark.slow),
    ],
)
def test_an_invalid_option_value_is_one_line(option, message, rafdb_root, tmp_path, capsys):
    assert message in fails(fit_args(rafdb_root, tmp_path / "run", *option), capsys)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--trainer.max_epochs", "0"], "trainer.max_epochs=0 trains nothing; give 1 or more (-1: no limit)"),
        pytest.param(["--trainer.max_steps", "0"], "trainer.max_steps=0 trains nothing", marks=pytest.mark.slow),
        pytest.param(
            ["--trainer.limit_train_batches", "0"],
            "trainer.limit_train_batches=0.0 trains nothing",
            marks=pytest.mark.slow,
        ),
        (
            ["--data.batch_size", "1000", "--data.drop_last", "true"],
            "the train split has 42 images, fewer than --data.batch_size 1000: with --data.drop_last true not one",
        ),
        (["--trainer.val_check_interval", "1000"], "--trainer.val_check_interval 1000 is more than the "),
        pytest.param(
            ["--trainer.limit_train_batches", "0.001"],
            "--trainer.limit_train_batches 0.001 keeps none of the ",
            marks=pytest.mark.slow,
        ),
        (["--trainer.max_epochs", "-2"], "`max_epochs` must be a non-negative integer or -1. You passed in -2."),
        pytest.param(
            ["--trainer.accelerator", "gpu"],
            "--trainer.accelerator gpu: PyTorch finds no GPU on this machine",
            marks=pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU"),
        ),
    ],
)
def test_trainer_settings_lightning_cannot_use_are_one_line_before_the_run(
    option, message, rafdb_root, tmp_path, capsys
):
    """Lightning's refusals were tracebacks; zero epochs (or batches) trained nothing and said nothing."""
    assert message in fails(fit_args(rafdb_root, tmp_path / "run", *option), capsys)
    assert not (tmp_path / "run").exists()


def test_label_issues_refuses_a_count_of_suspects_below_one(trained_run, capsys):
    """``--top -3`` silently dropped the last three images from the figure."""
    command = ["label-issues", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"), "--top", "-3"]
    assert "--top: Not of type PositiveInt: -3" in fails(command, capsys)
    assert not (trained_run / "label-issues").exists()


def test_label_issues_asks_for_cleanlab_before_ranking_with_its_counts(trained_run, capsys, monkeypatch):
    """``--suspects confident_learning`` needs cleanlab: said in one line before any image is looked at."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else found(name, *a))
    command = ["label-issues", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt")]
    assert "give --write_labels too" in fails([*command, "--suspects", "confident_learning"], capsys)
    expected = "--suspects: expected a positive integer or one of 'contradicted', 'confident_learning'; got -3"
    assert expected in fails([*command, "--suspects", "-3", "--write_labels", "drop"], capsys)
    message = "--suspects confident_learning counts with cleanlab, which is not installed: pip install 'nla[cleanlab]'"
    assert message in fails([*command, "--suspects", "confident_learning", "--write_labels", "drop"], capsys)
    assert not (trained_run / "label-issues").exists()


@pytest.mark.slow
def test_a_wrong_data_root_stops_before_the_logger_or_an_output_folder_is_made(trained_run, tmp_path, capsys):
    """The label files are read before W&B starts a run (it did, and printed after the error) and before an
    evaluation's output folder is kept: the fixed command finds nothing left over."""
    run_dir, absent = tmp_path / "run", str(tmp_path / "absent")
    fit = ["fit", "--config", str(CONFIGS / "rafdb.yaml"), *TINY, "--trainer.default_root_dir", str(run_dir)]
    missing = f"RAFDBDataModule: --data.root {absent!r} does not exist or is not a folder"
    assert missing in fails([*fit, "--data.root", absent], capsys)  # with nla's default W&B logger
    assert not run_dir.exists()
    evaluated = tmp_path / "evaluated"
    shutil.copytree(trained_run, evaluated)
    ckpt = str(evaluated / "checkpoints" / "last.ckpt")
    data = ["--data", "nla.data.RAFDBDataModule", "--data.root", absent, "--trainer.logger", "false"]
    assert missing in fails(["test", "--ckpt_path", ckpt, *data], capsys)
    empty = tmp_path / "no-images"
    empty.mkdir()
    predict = ["predict", "--ckpt_path", ckpt, "--data.prediction.root", str(empty), "--trainer.logger", "false"]
    assert "holds no files" in fails(predict, capsys)
    assert not (evaluated / "test").exists() and not (evaluated / "predict").exists()
    csv = ["--data", "nla.data.CSVDataModule", "--data.root", str(tmp_path), "--trainer.logger", "false"]
    assert "needs the classes in label order" in fails(["fit", *csv], capsys)  # was a wall of jsonargparse


@pytest.mark.parametrize(
    "option, message",
    [
        (["--model.backbone", "resnet_nonexistent"], "backbone 'resnet_nonexistent' is not a timm model"),
        pytest.param(
            ["--model.pretrained_weights", "absent.pth"],
            "pre-trained weights file 'absent.pth' does not exist",
            marks=pytest.mark.slow,
        ),
        (["--ckpt_path", "not-a-checkpoint.ckpt"], "cannot be read as a PyTorch file"),
    ],
)
def test_a_wrong_model_file_or_name_stops_fit_before_it_writes_anything(
    option, message, rafdb_root, tmp_path, capsys, monkeypatch
):
    """A wrong backbone name was a traceback after the data had been read and the config written; a file that
    is no checkpoint given to --ckpt_path was torch's page-long traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-checkpoint.ckpt").write_text("not a checkpoint")
    assert message in fails(fit_args(rafdb_root, tmp_path / "run", *option), capsys)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--data.protocol.noise_source", "standard"],
            "--data.protocol.noise_source: expected one of 'auto', 'standard_file', 'generate'; got standard",
        ),
        pytest.param(
            ["--data.preprocessing.mean", "[0.5, 0.5]"],
            "--data.preprocessing.mean: expected a tuple with 3 elements or null; got [0.5, 0.5]",
            marks=pytest.mark.slow,
        ),
        (["--trainer.max_epochs", "x"], "--trainer.max_epochs: expected an integer or null; got x"),
        pytest.param(
            ["--model.criterion.consistency", "kl"],
            "--model.criterion.consistency: expected one of 'none', 'jsd', 'l1', 'cam'; got kl",
            marks=pytest.mark.slow,
        ),
        pytest.param(["--no_such_option", "1"], "unrecognized arguments: --no_such_option 1", marks=pytest.mark.slow),
        (
            ["--data.batchsize", "8"],
            "--data.batchsize is not an option of nla.data.RAFDBDataModule (did you mean batch_size?)",
        ),
        (["--data.noise_rate", "0.3"], "--data.noise_rate is now data.protocol.noise_rate"),  # nla 0.2's flat keys
        (["--data.faces", "all"], "--data.faces is a group of settings now: give --data.faces.choice"),
        pytest.param(
            ["--model.criterion.lamm", "1"],
            "--model.criterion.lamm is not an option of CriterionConfig (did you mean lam?)",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_an_option_that_does_not_parse_is_one_line_without_the_usage(args, message, rafdb_root, tmp_path, capsys):
    """jsonargparse printed a page of usage, and for --data a report on every Union subtype, around the one fact."""
    says(fails(fit_args(rafdb_root, tmp_path / "run", *args), capsys), message)
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_is_not_yaml_names_its_line(rafdb_root, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  lr: 1e-4\ndata:\n  batch_size: [\n")
    for args in (fit_args(rafdb_root, tmp_path / "run", "--config", str(broken)), ["test", "-c", str(broken)]):
        assert fails(args, capsys).startswith(f"nla: error: {broken}:5: not valid YAML")


@pytest.mark.slow
def test_an_unknown_key_in_a_config_file_names_the_file_and_line(rafdb_root, tmp_path, capsys):
    """jsonargparse named neither the file nor the line, and for a class's options said '--data: expected null'."""
    typos = {
        "model:\n  lr: 0.001\n  lrr: 0.1\n": "3: model.lrr is not an option of NLAModule (did you mean lr?)",
        "data:\n  init_args:\n    batchsize: 8\n": (
            "3: data.batchsize is not an option of nla.data.RAFDBDataModule (did you mean batch_size?)"
        ),
        "trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args:\n"
        "      save_dirr: logs\n": (
            "5: trainer.logger.save_dirr is not an option of lightning.pytorch.loggers.CSVLogger (did you mean "
            "save_dir?)"
        ),
    }
    for k, (text, message) in enumerate(typos.items()):
        config = tmp_path / f"typo{k}.yaml"
        config.write_text(text)
        args = fit_args(rafdb_root, tmp_path / "run", "--config", str(config))
        says(fails(args, capsys), f"{config}:{message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param([], "nla needs a command, e.g. nla fit; `nla --help` lists them", marks=pytest.mark.slow),
        (["test"], "nla test needs a model and its data: pass --ckpt_path (a checkpoint of nla fit), or --data"),
        pytest.param(
            ["experiment"], "nla experiment needs config; `nla experiment --help` describes it", marks=pytest.mark.slow
        ),
    ],
)
def test_a_command_missing_what_it_needs_says_what_to_give(args, message, capsys):
    assert fails(args, capsys).startswith(f"nla: error: {message}")


def test_a_corrupt_checkpoint_is_one_line_in_every_command(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:20000])  # cut short
    for args in (
        fit_args(tmp_path, run_dir, "--ckpt_path", "last", epochs=3),
        ["test", "--ckpt_path", str(last)],
        ["predict", "--ckpt_path", str(last), "--data.prediction.root", str(tmp_path)],
        ["export", "--ckpt_path", str(last), "--output", str(tmp_path / "m.onnx")],
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(args)
        err = capsys.readouterr().err
        assert "last.ckpt' cannot be read as a PyTorch file" in err and "Traceback" not in err, (args[0], err)


def test_a_folder_given_for_a_checkpoint_is_named_with_the_checkpoint_in_it(trained_run, tmp_path, capsys):
    """A run folder or its checkpoints folder was "does not exist"."""
    last = str(trained_run / "checkpoints" / "last.ckpt")
    err = fails(["test", "--ckpt_path", str(trained_run)], capsys)
    assert f"{str(trained_run)!r} is a folder, not a file" in err and f"did you mean {last!r}" in err
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(trained_run / "checkpoints"), "--output", str(tmp_path / "m.onnx")])
    assert f"is a folder, not a file; did you mean {last!r}?" in capsys.readouterr().err
    assert "give the path of the checkpoint itself" in fails(["test", "--ckpt_path", str(tmp_path)], capsys)
    assert not (trained_run / "test").exists() and not (tmp_path / "m.onnx").exists()


def test_a_checkpoint_holding_pickled_objects_is_refused(trained_run, tmp_path, capsys):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["extra"] = RunLock(tmp_path)  # any object that is not plain data
    torch.save(checkpoint, tmp_path / "tampered.ckpt")
    err = fails(["test", "--ckpt_path", str(tmp_path / "tampered.ckpt")], capsys)
    assert "holds pickled Python objects" in err and "nla.rundir.RunLock" in err


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(trained_run, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        "nla.checkpoint_io.os.fdopen",
        lambda fd, mode: (os.close(fd), real_fdopen(os.open("/dev/full", os.O_WRONLY), mode))[1],
    )
    err = fails(
        fit_args(
            tmp_path, run_dir, "--data.root", str(trained_run.parent.parent / "rafdb0"), "--ckpt_path", "last", epochs=3
        ),
        capsys,
    )
    assert "No space left on device writing" in err and ".ckpt" in err
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before
    assert not list((run_dir / "checkpoints").glob(".*.partial"))


def test_a_bad_image_found_mid_epoch_names_its_line(rafdb_root, tmp_path, capsys):
    from tests.fakes import write_rafdb

    root = write_rafdb(tmp_path / "rafdb", train_per_class=2, test_per_class=1, size=24)
    (root / "basic" / "Image" / "aligned" / "train_00004_aligned.jpg").write_bytes(b"broken")
    err = fails(
        fit_args(root, tmp_path / "run", "--data.check_images", "exists", "--data.pipeline", "albumentations"), capsys
    )
    assert "list_patition_label.txt:4: cannot decode image" in err and "train_00004_aligned.jpg" in err


@pytest.mark.slow
def test_pretrained_weights_holding_pickled_objects_are_refused_through_the_cli(rafdb_root, tmp_path, capsys):
    import torchvision

    torch.save(
        {"state_dict": torchvision.models.resnet18().state_dict(), "meta": RunLock(tmp_path)}, tmp_path / "w.pth"
    )
    err = fails(
        fit_args(
            rafdb_root,
            tmp_path / "run",
            "--model.backbone",
            "resnet18",
            "--model.pretrained_weights",
            str(tmp_path / "w.pth"),
        ),
        capsys,
    )
    assert "--model.trust_pretrained_weights true" in err
    main(
        [
            *fit_args(rafdb_root, tmp_path / "run2"),
            "--model.backbone",
            "resnet18",
            "--model.pretrained_weights",
            str(tmp_path / "w.pth"),
            "--model.trust_pretrained_weights",
            "true",
            "--trainer.max_steps",
            "1",
        ]
    )
    assert (tmp_path / "run2" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_bad_label_row_stops_the_fit_with_its_line(tmp_path, capsys):
    from tests.fakes import write_rafdb

    root = write_rafdb(tmp_path / "rafdb", train_per_class=2, test_per_class=1, size=24)
    labels = root / "basic" / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text().replace("train_00005.jpg", "trian_00005.jpg"))
    err = fails(fit_args(root, tmp_path / "run", *TINY), capsys)
    assert "list_patition_label.txt:5: image name 'trian_00005.jpg' starts with neither 'train_' nor 'test_'" in err


def test_a_config_of_nla_0_2_names_the_file_line_and_the_new_key(rafdb_root, tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  init_args:\n    batch_size: 8\n    val_fraction: 0.2\n")
    err = fails(fit_args(rafdb_root, tmp_path / "run", "--config", str(old)), capsys)
    assert f"{old}:4: data.val_fraction is now data.holdout.val_fraction" in err
    assert not (tmp_path / "run").exists()


def test_a_callback_named_by_its_nla_0_2_class_path_says_where_it_is_now(rafdb_root, tmp_path, capsys):
    args = fit_args(rafdb_root, tmp_path / "run", "--trainer.callbacks+=nla.diagnostics.SampleRecord")
    assert "--trainer.callbacks: nla.diagnostics.SampleRecord is now nla.callbacks.SampleRecord" in fails(args, capsys)


# --- the second fault pass: checkpoints a fit cannot go on from, full disks, closed pipes, cleaned-out labels ----


def test_a_checkpoint_that_leaves_nothing_to_train_says_what_to_do_instead(trained_run, rafdb_root, tmp_path, capsys):
    """Another run's finished checkpoint trained nothing and said nothing; ``best`` failed on a KeyError."""
    last = trained_run / "checkpoints" / "last.ckpt"
    err = fails(fit_args(rafdb_root, tmp_path / "new", "--ckpt_path", str(last), epochs=2), capsys)
    says(err, f"{last} has trained 2 epochs", "--trainer.max_epochs is 2", "nothing would train", "pretrained_weights")
    run_dir = tmp_path / "own"
    shutil.copytree(trained_run, run_dir)
    err = fails(fit_args(rafdb_root, run_dir, "--ckpt_path", "best", epochs=3), capsys)
    says(err, "holds a model's weights only", "a fit goes on from a run's last.ckpt", "--model.pretrained_weights")


@pytest.mark.slow
def test_a_checkpoint_of_other_classes_is_refused_in_one_line(trained_run, ferplus_root, tmp_path, capsys):
    """A RAF-DB run's checkpoint given to a FER+ fit: a size-mismatch traceback."""
    last = str(trained_run / "checkpoints" / "last.ckpt")
    args = fit_args(ferplus_root, tmp_path / "run", "--ckpt_path", last, config="ferplus.yaml", epochs=3)
    says(fails(args, capsys), "the checkpoint's model has the classes", "this run's data", "--model.pretrained_weights")


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """torch wraps the OS's refusal in a RuntimeError: a traceback, and the partial file left behind."""
    import errno

    from nla import checkpoint_io

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"the previous checkpoint")

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(checkpoint_io.torch, "save", full)
    monkeypatch.setattr(checkpoint_io.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError) as error:
        checkpoint_io.AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, path)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert path.read_bytes() == b"the previous checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt"
    ]


def test_suspects_that_would_drop_every_image_write_no_label_file(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    command = ["label-issues", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--trainer.logger", "false"]
    err = fails([*command, "--write_labels", "drop", "--suspects", "500"], capsys)
    says(err, "--suspects 500 would drop every one of the 42 training images")
    assert not list(run_dir.glob("label-issues*/cleaned_labels*.txt"))


def test_output_cut_short_by_its_reader_ends_quietly():
    """``nla --help | head -1`` ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    for command in (["--help"], ["compare", "--help"]):
        shell = f"{sys.executable} -m nla {' '.join(command)} | head -1"
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
        assert done.stdout.startswith("usage: nla") and done.stderr == "", (command, done.stderr)
