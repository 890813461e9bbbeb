"""What a GPU run does, checked on the CPU: no host wait per training step, a non-finite loss caught without one,
bf16 autocast in the criterion and the metrics. (bf16-mixed and torch.compile fits: tests/test_precision.py; the
batched augmentation: tests/test_batch_augment.py.)"""

import itertools
import sys
from types import SimpleNamespace

import pytest
import torch

from nla import CriterionConfig, NLAModule
from nla.callbacks import console
from nla.cli import main, run_cli
from nla.cli.lightning import default_precision
from nla.data import RAFDBDataModule
from tests.conftest import CONFIGS, TINY, fit_args
from tests.helpers import PoisonBatch, fails


@pytest.mark.slow
def test_a_training_step_makes_the_host_wait_only_at_logging_intervals(rafdb_root, tmp_path, monkeypatch):
    every = 4
    ticks = itertools.count()  # a clock that moves 0.13 s a reading: the bar (0.5 s) redraws at every 4th step
    monkeypatch.setattr(console, "monotonic", lambda: 0.13 * next(ticks))
    settings = ["--trainer.callbacks+=tests.helpers.CountSyncs", "--trainer.log_every_n_steps", str(every)]
    settings += ["--data.pipeline", "cached", "--trainer.enable_progress_bar", "true"]
    cli = run_cli(fit_args(rafdb_root, tmp_path / "run", *TINY, *settings, figures=True))
    counter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "CountSyncs")
    steps = counter.steps  # every step but the last, whose window runs into the epoch's end
    assert len(steps) == 5, len(steps)
    waited = {k: calls for k, calls in enumerate(steps) if calls}
    assert set(waited) == {every - 1}, waited  # the bar's redraw and the non-finite check, at the 4th step only
    assert [call.split(" at ")[1].split(":")[0] for call in waited[every - 1]] == ["console.py", "nonfinite.py"]


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_precision_null_is_bf16_mixed_where_a_gpu_trains_and_full_precision_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_precision("auto") == default_precision("gpu") == "bf16-mixed"
    assert default_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_precision("auto") == "32-true"


@pytest.mark.parametrize("consistency", ["jsd", "l1", "cam"])
def test_a_training_and_an_evaluation_step_under_bf16_autocast_on_the_cpu(consistency):
    """What bf16-mixed does on a GPU: bf16 activations, float32 loss, weights, gradients and metrics."""
    torch.manual_seed(0)
    config = CriterionConfig(consistency=consistency, schedule_epochs=10)
    model = NLAModule(backbone="test_resnet", class_names=list("abcd"), criterion=config)
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16  # the autocast really runs in bf16
        result = model.training_step((images, labels), 0)
    loss = result["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and result["probs"].dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model._evaluation_step((images, labels), "val")
    confusion = model.confusion["val"].compute()
    assert confusion.sum() == 6 and confusion.dtype == torch.long


def test_auto_pipeline_caches_on_an_accelerator_and_decodes_per_sample_on_a_cpu(rafdb_root):
    for device, cached in (("cuda", True), ("cpu", False)):
        data = RAFDBDataModule(str(rafdb_root))
        data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert data.preparation.cache_enabled(data.read_split("train"), data.trainer) is cached
