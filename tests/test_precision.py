"""The GPU recipe's settings, run on the CPU: bf16 mixed precision and torch.compile through the CLI."""

import json

import pytest
import torch

from nla import NLAModule
from nla.cli import run_cli
from tests.conftest import CONFIGS, TINY


def fit(root, run_dir, *extra):
    return run_cli([
        "fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data.root", str(root), "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.logger", "false",
        "--model.backbone", "resnet10t", "--data.pipeline", "cached", *TINY, *extra,
    ])


def test_bf16_mixed_precision_trains_and_evaluates(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    cli = fit(rafdb_root, run_dir, "--trainer.precision", "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    logged = cli.trainer.logged_metrics
    assert torch.isfinite(logged["train/loss_epoch"]) and 0.0 <= float(logged["val/acc"]) <= 1.0
    assert json.loads((run_dir / "summary.json").read_text())["last"]["epoch"] == 0
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())  # master weights stay fp32


@pytest.mark.slow
def test_compiled_model_trains_and_its_checkpoint_loads_uncompiled(rafdb_root, tmp_path):
    run_dir = tmp_path / "run"
    cli = fit(rafdb_root, run_dir, "--model.compile", "true")
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss_epoch"])
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    plain = NLAModule.load_from_checkpoint(checkpoint, compile=False).eval()
    compiled = cli.model.eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(images), compiled(images), atol=1e-4)
