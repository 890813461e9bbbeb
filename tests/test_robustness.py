"""Trusting a long run: resume after a real kill, determinism, DDP, and stopping on a non-finite loss."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nla.cli import main, run_cli
from tests.conftest import CONFIGS, TINY

REPO = Path(__file__).resolve().parents[1]


def fit_command(root, run_dir, *extra):
    return [sys.executable, "-m", "nla", "fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data.root", str(root),
            "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "3", "--model.backbone", "resnet10t",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir),
            *TINY, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_fit_killed_mid_epoch_resumes_and_ends_with_the_same_epochs(how, rafdb_root, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    pause = ["--trainer.callbacks+=tests.helpers.PauseMidEpoch", "--trainer.callbacks.marker", str(marker)]
    process = subprocess.Popen(fit_command(rafdb_root, run_dir, *pause), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), process.communicate()[0][-3000:]
    process.send_signal(how)  # the process is inside epoch 1, at batch 2
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0
    if how == signal.SIGTERM:
        assert "stopped by SIGTERM" in output and "--ckpt_path last" in output
    interrupted = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert interrupted["epoch"] == 0  # the last checkpoint is the end of epoch 0

    resumed = subprocess.run(fit_command(rafdb_root, run_dir, "--ckpt_path", "last"), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    steps_per_epoch = math.ceil(42 / 8)
    assert final["epoch"] == 2 and final["global_step"] == 3 * steps_per_epoch
    assert final["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(1e-4 * 0.9**3)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1, 2]
    # The resumed process logged epochs 1 and 2 with the scheduler and LR of those epochs.
    metrics = sorted(run_dir.glob("lightning_logs/version_*/metrics.csv"))[-1].read_text().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in metrics[1:]]
    logged = {int(r["epoch"]): (float(r["train/covariance_schedule"]), float(r["train/lr"]))
              for r in rows if r.get("train/covariance_schedule")}
    assert sorted(logged) == [1, 2]
    for epoch, (schedule, lr) in logged.items():
        assert schedule == pytest.approx(1 - math.exp(-15 * epoch / 3))
        assert lr == pytest.approx(1e-4 * 0.9**epoch)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config-fit.yaml").is_file()


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data.root", str(rafdb_root), "--trainer.default_root_dir",
            str(run_dir), "--model.backbone", "resnet10t", "--trainer.logger", "false", *TINY]
    main([*args, "--trainer.max_epochs", "1"])
    last = run_dir / "checkpoints" / "last.ckpt"
    before = (last.stat().st_mtime_ns, last.read_bytes())
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--trainer.max_epochs", "2", "--model.lam", ".nan", "--ckpt_path", "last"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 1" in err and "checkpoints already written are kept" in err and "Traceback" not in err
    assert (last.stat().st_mtime_ns, last.read_bytes()) == before


def test_a_checkpoint_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from nla import checkpoint_io
    from nla.checkpoint_io import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    (path.parent / ".last.ckpt.k1ll3d.partial").write_bytes(b"left by a killed save")
    io.save_checkpoint({"epoch": 1, "weights": torch.arange(10.0)}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]

    def cut_short(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(10)}, path)
    assert io.load_checkpoint(path)["epoch"] == 1 and torch.equal(io.load_checkpoint(path)["weights"], torch.arange(10.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the partial file is cleaned up


def test_a_process_killed_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that keeps rewriting a large checkpoint: whenever it dies, the file is a whole one."""
    path = tmp_path / "last.ckpt"
    writer = (
        "import sys, torch\n"
        "from nla.checkpoint_io import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "for version in range(10**6):\n"
        "    io.save_checkpoint({'version': version, 'weights': torch.full((8_000_000,), float(version))}, sys.argv[1])\n"
        "    print(version, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it finish a few saves, so that the kill lands while it overwrites one
        assert process.stdout.readline(), "the writer stopped"
    time.sleep(0.05)
    process.kill()
    process.wait()
    checkpoint = torch.load(path)
    assert checkpoint["version"] >= 2 and torch.equal(checkpoint["weights"], torch.full((8_000_000,), float(checkpoint["version"])))


@pytest.mark.parametrize("pipeline, workers", [("albumentations", "2"), ("cached", "0")])
def test_same_seed_gives_identical_metrics_on_the_cpu(pipeline, workers, rafdb_root, tmp_path):
    def run(name):
        cli = run_cli(["fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data.root", str(rafdb_root),
                       "--trainer.default_root_dir", str(tmp_path / name), "--trainer.max_epochs", "2",
                       "--trainer.deterministic", "true", "--seed_everything", "7", "--model.backbone", "resnet10t",
                       "--trainer.logger", "false", "--data.pipeline", pipeline, *TINY, "--data.num_workers", workers])
        return json.loads((tmp_path / name / "summary.json").read_text()), cli.model.model.state_dict()

    (first, weights_a), (second, weights_b) = run("a"), run("b")
    assert first == second
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(rafdb_root, tmp_path):
    run_dir = tmp_path / "ddp"
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    fit = subprocess.run(fit_command(rafdb_root, run_dir, "--trainer.max_epochs", "1", "--data.pipeline", "cached", *ddp),
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "summary.json").is_file()
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    # Each process trained on its own half: 21 images, 3 batches of 8 (one process alone would take 6).
    assert torch.load(ckpt, weights_only=False)["global_step"] == 3

    def test_metrics(*extra):
        done = subprocess.run([sys.executable, "-m", "nla", "test", "--config", str(run_dir / "config.yaml"),
                               "--ckpt_path", ckpt, *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        newest = max(run_dir.glob("test_metrics*.json"), key=lambda p: p.stat().st_mtime_ns)
        return json.loads(newest.read_text())["metrics"]

    two = test_metrics(*ddp)
    one = test_metrics("--trainer.devices", "1", "--trainer.strategy", "auto")
    assert two.keys() == one.keys() and "test/acc_Fear" in two
    for key in two:
        if key != "test/loss":  # the loss is averaged per process batch; accuracies are synced counts
            assert two[key] == pytest.approx(one[key], abs=1e-6), key
