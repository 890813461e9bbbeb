"""What a GPU run does, checked on the CPU: no host wait per training step, a non-finite loss caught without one,
bf16 autocast in the criterion and the metrics. (bf16-mixed and torch.compile fits: tests/test_precision.py; the
batched augmentation: tests/test_batch_augment.py.)"""

import sys

import torch

from nla.callbacks import ProgressBar
from nla.cli import main, run_cli
from tests.conftest import CONFIGS, TINY, fit_args
from tests.helpers import PoisonBatch
from tests.test_faults import fails


def test_a_training_step_makes_the_host_wait_only_at_logging_intervals(rafdb_root, tmp_path, monkeypatch):
    every = 4
    monkeypatch.setattr(ProgressBar, "CPU_REFRESH", every)  # as on a GPU: the bar reads the loss every few steps
    settings = ["--trainer.callbacks+=tests.helpers.CountSyncs", "--trainer.log_every_n_steps", str(every)]
    settings += ["--data.pipeline", "cached", "--trainer.enable_progress_bar", "true"]
    cli = run_cli(fit_args(rafdb_root, tmp_path / "run", *TINY, *settings, figures=True))
    counter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "CountSyncs")
    steps = counter.steps  # every step but the last, whose window runs into the epoch's end
    assert len(steps) == 5, len(steps)
    waited = {k: calls for k, calls in enumerate(steps) if calls}
    assert set(waited) == {every - 1}, waited  # the bar's redraw and the non-finite check, at the 4th step only
    assert [call.split(" at ")[1].split(":")[0] for call in waited[every - 1]] == ["callbacks.py", "module.py"]


def test_a_non_finite_loss_stops_the_run_with_the_weights_of_before_it_and_no_checkpoint(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    poison = ["--trainer.callbacks+=tests.helpers.PoisonBatch", "--data.pipeline", "cached"]
    err = fails(fit_args(rafdb_root, run_dir, *poison, "--trainer.log_every_n_steps", "50", epochs=3), capsys)
    steps = 6  # 42 training images in batches of 8
    assert f"non-finite loss at epoch 1, step {steps + 1}: classification=nan" in err
    assert "The run stops before this step changes any weight" in err and "--ckpt_path last and a lower" in err
    assert PoisonBatch.unchanged and all(PoisonBatch.unchanged.values())  # the update was skipped on the device
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_without_wandb_the_default_logger_is_csv_and_an_asked_for_wandb_logger_is_one_line(
    rafdb_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as on a machine without it: importing it fails
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(CONFIGS / "rafdb.yaml"), *TINY, "--data.root", str(rafdb_root)]
    args += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
    main([*args, "--trainer.default_root_dir", str(run_dir)])
    assert "wandb is not installed: logging to CSV" in capsys.readouterr().err
    (metrics,) = (run_dir / "csv").glob("version_*/metrics.csv")
    assert "train/loss_epoch" in metrics.read_text().splitlines()[0]
    for logger in ("nla.loggers.WandbLogger", "lightning.pytorch.loggers.WandbLogger"):
        err = fails([*args, "--trainer.default_root_dir", str(tmp_path / "w"), "--trainer.logger", logger], capsys)
        assert "a W&B logger needs the wandb package, which is not installed: pip install wandb" in err
