"""Faults met through the CLI as a careful user met them, the input's side: every wrong root, option, config, file
or checkpoint is one line that names it, before the run writes anything."""

import os
import shutil

import pytest
import torch

from nla.cli import main
from nla.rundir import RunLock
from tests.conftest import CONFIGS, TINY, fit_args
from tests.helpers import fails, says

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
            "trainer.limit_train_batches=0 trains nothing",
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
        (  # the graph step writes the backward pass and Adam's update: Lightning's clipping would be skipped
            ["--model.step_graph", "true", "--trainer.gradient_clip_val", "1.0"],
            "--model.step_graph true writes each step's backward pass and Adam's update itself and does not clip "
            "gradients (--trainer.gradient_clip_val 1.0): drop that setting or the graph step",
        ),
        (
            ["--model.step_graph", "true", "--trainer.accumulate_grad_batches", "2"],
            "does not accumulate gradients (--trainer.accumulate_grad_batches 2)",
        ),
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


def test_the_graph_step_with_float16_on_a_gpu_is_one_line_before_the_run(rafdb_root, tmp_path, capsys, monkeypatch):
    """On a GPU, 16-mixed scales the loss through Lightning's optimiser step, which the graph step replaces (Lightning's
    scaler would fail at the first step); on a CPU Lightning runs 16-mixed as bf16-mixed, which needs no scaling."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused before anything touches the GPU
    args = fit_args(rafdb_root, tmp_path / "run", "--model.step_graph", "true", "--trainer.precision", "16-mixed")
    says(fails(args, capsys), "does not scale the loss for float16 (--trainer.precision 16-mixed; bf16-mixed needs")
    assert not (tmp_path / "run").exists()


def test_label_issues_refuses_a_count_of_suspects_below_one(trained_run, capsys):
    """``--top -3`` silently dropped the last three images from the figure."""
    command = ["label-issues", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt"), "--top", "-3"]
    assert "--top: Not of type PositiveInt: -3" in fails(command, capsys)
    assert not (trained_run / "label-issues").exists()


@pytest.mark.slow
def test_label_issues_asks_for_cleanlab_before_ranking_with_its_counts(trained_run, capsys, monkeypatch):
    """``--suspects confident_learning`` needs cleanlab: said in one line before any image is looked at."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else found(name, *a))
    command = ["label-issues", "--ckpt_path", str(trained_run / "checkpoints" / "last.ckpt")]
    assert "give --write_labels too" in fails([*command, "--suspects", "confident_learning"], capsys)
    expected = "--suspects: expected a positive integer or one of 'contradicted', 'confident_learning'; got -3"
    assert expected in fails([*command, "--suspects", "-3", "--write_labels", "drop"], capsys)
    message = "--suspects confident_learning counts with cleanlab, which is not installed: pip install cleanlab"
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
        (  # was "Expected a path but nla.data.RAFDBDataModul either not accessible or invalid"
            ["--data", "nla.data.RAFDBDataModul"],
            "--data nla.data.RAFDBDataModul: nla.data has no class RAFDBDataModul (did you mean "
            "nla.data.RAFDBDataModule?)",
        ),
        pytest.param(
            ["--trainer.logger", "lightning.pytorch.loggers.CSVLoger"],
            "lightning.pytorch.loggers has no class CSVLoger (did you mean lightning.pytorch.loggers.CSVLogger?)",
            marks=pytest.mark.slow,
        ),
        (  # was "--data: expected null; got NestedArg(key='faces.detectt', val='1')"
            ["--data.faces.detectt", "true"],
            "--data.faces.detectt is not an option of nla.data.prediction.FaceSettings (did you mean detect?)",
        ),
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


def test_a_naw_warm_up_as_long_as_the_run_is_said(rafdb_root, tmp_path):
    """naw_warmup_epochs 100 with max_epochs 1: NAW never started, and nothing said so."""
    with pytest.warns(UserWarning, match="naw_warmup_epochs 1 is not below --trainer.max_epochs 1: NAW never starts"):
        main(fit_args(rafdb_root, tmp_path / "run", "--model.criterion.naw_warmup_epochs", "1", epochs=1))
