"""Faults met through the CLI as a careful user met them, the run's side: no run's files lost, overwritten or
mislabelled, and a full disk or a closed pipe costs nothing already written."""

import json
import os
import shutil

import pytest
import torch
import yaml

from nla.cli import main
from nla.rundir import RunDirectoryError, RunLock
from tests.conftest import CONFIGS, fit_args
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
    assert f"there is no run in '{tmp_path / 'run'}'" in err and "last.ckpt" in err and "starts a new run" in err


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


# --- the third fault pass: evaluation commands given no model, or weights that do not fit ------------------


def test_predict_with_no_checkpoint_is_one_line_and_makes_no_folder(tmp_path, capsys, monkeypatch):
    """nla predict without --ckpt_path: a traceback (FERDataModule does not name its classes), and ./runs/data/predict
    left behind."""
    monkeypatch.chdir(tmp_path)
    photo = tmp_path / "face.png"
    photo.write_bytes(b"")
    err = fails(["predict", "--data.prediction.root", str(photo)], capsys)
    says(err, "nla predict needs a model and its data: pass --ckpt_path")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_checkpoints_that_are_not_a_fits_or_do_not_fit_their_model_are_one_line(
    trained_run, tmp_path, capsys, monkeypatch
):
    """A file of weights given to nla test: 'pass --ckpt_path' though it was passed; a checkpoint whose recorded
    backbone is not the one its weights are of: a traceback and a line per tensor, in test and in export, and a
    runs/edited/test folder left behind that looked like a result."""
    monkeypatch.chdir(tmp_path)  # a checkpoint outside a run writes into runs/<its name>
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign)
    says(fails(["test", "--ckpt_path", str(foreign)], capsys), f"{foreign} is not a checkpoint written by nla fit")

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    checkpoint["hyper_parameters"]["backbone"] = "resnet18"  # the weights are test_resnet's
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    err = fails(["test", "--ckpt_path", str(edited), "--trainer.logger", "false"], capsys)
    says(err, "the checkpoint's weights do not fit the model its settings describe", "missing", "of another shape")
    assert "[64] in the model" in err
    assert (tmp_path / "runs" / "edited").is_dir() and not list((tmp_path / "runs" / "edited").iterdir())
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(edited), "--output", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert err.startswith("nla export: error: the checkpoint's weights do not fit") and err.count("\n") == 1


def test_compare_names_a_file_that_is_not_a_summary(tmp_path, capsys):
    for content in (b"[]", b'{"epochs": [{"acc": 0.5}]}', b"\x80\x03binary"):
        (tmp_path / "summary.json").write_bytes(content)
        with pytest.raises(SystemExit):
            main(["compare", str(tmp_path)])
        err = capsys.readouterr().err
        assert err.startswith(f"nla compare: error: {tmp_path / 'summary.json'}: not a") and err.count("\n") == 1, err


def test_a_checkpoints_relative_data_root_from_another_folder_is_named(trained_run, tmp_path, capsys, monkeypatch):
    """A run trained with --data.root fer, tested from another folder: 'FERPlusDataModule: --data.root 'fer' does
    not exist', an option the user never typed."""
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=False)
    checkpoint["datamodule_hyper_parameters"]["root"] = "raf"
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    monkeypatch.chdir(tmp_path)
    err = fails(["test", "--ckpt_path", str(moved)], capsys)
    says(err, f"{moved} was trained on --data.root 'raf', a path relative to where it was trained", "--data.root")


@pytest.mark.parametrize(
    "option, message",
    [
        (["--model.backbone", "resnet18"], "--model.backbone 'resnet18': nla test runs the model last.ckpt holds"),
        (["--data.preprocessing.image_size", "64"], "--data.preprocessing.image_size 64: the model in"),
    ],
)
def test_model_or_input_settings_a_checkpoint_overrides_are_refused(trained_run, capsys, option, message):
    """nla test --ckpt_path ... --model.backbone resnet18: exit 0, the checkpoint's model, and not a word."""
    says(fails(["test", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"), *option], capsys), message)
