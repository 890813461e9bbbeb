"""The GPU recipe's settings, run on the CPU: bf16 mixed precision and torch.compile through the CLI."""

import json

import pytest
import torch

from nla import NLAModule
from nla.cli import run_cli
from tests.conftest import fit_args


def fit(root, run_dir, *extra):
    return run_cli(fit_args(root, run_dir, "--trainer.limit_train_batches", "3", "--data.pipeline", "cached", *extra))


@pytest.mark.slow
def test_bf16_mixed_precision_trains_and_evaluates(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    cli = fit(rafdb_root, run_dir, "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    logged = cli.trainer.logged_metrics
    assert torch.isfinite(logged["train/loss_epoch"]) and 0.0 <= float(logged["val/acc"]) <= 1.0
    assert json.loads((run_dir / "summary.json").read_text())["last"]["epoch"] == 0
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())  # master weights stay fp32


@pytest.mark.slow
def test_compiled_model_trains_and_its_checkpoint_loads_uncompiled(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    # Full batches only (8 images), so that the compiled graphs are not compiled again for a short last batch.
    cli = fit(rafdb_root, run_dir, "--model.compile", "true", "--trainer.limit_val_batches", "2")
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss_epoch"])
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    plain = NLAModule.load_from_checkpoint(checkpoint, compile=False, weights_only=True).eval()
    compiled = cli.model.eval()
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(images), compiled(images), atol=1e-4)
