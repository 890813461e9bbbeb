"""A short NLA run on the real RAF-DB learns: the training loss falls and test accuracy beats the majority class."""

import csv
import json

import pytest

from nla.cli import main
from tests.conftest import CONFIGS, real_dataset

MAJORITY_RATE = 1185 / 3068  # Happiness, the largest test class


@pytest.mark.realdata
@pytest.mark.slow
def test_short_run_on_real_rafdb_learns(tmp_path):
    root = real_dataset("rafdb")
    run_dir = tmp_path / "run"
    main([
        "fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data.root", str(root),
        "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir),
        "--data.image_size", "40", "--data.batch_size", "64", "--data.num_workers", "2", "--data.pipeline", "cached",
        "--model.lr", "0.001",
    ])
    (metrics,) = run_dir.glob("lightning_logs/*/metrics.csv")
    rows = list(csv.DictReader(open(metrics)))
    epoch_loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(epoch_loss) == 2 and epoch_loss[1] < epoch_loss[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    accuracy = summary["last"]["acc"]
    assert accuracy > MAJORITY_RATE + 0.05, f"test accuracy {accuracy:.3f} does not beat the majority rate {MAJORITY_RATE:.3f}"
    assert summary["last"]["mean_acc"] > 1 / 7 + 0.05
