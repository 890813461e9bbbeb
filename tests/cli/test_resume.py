"""A fit killed mid-epoch, by SIGKILL or SIGTERM, resumes with the same command and ends on the same epochs, with
the covariance scheduler and the learning-rate schedule where they were."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nla.cli import main
from tests.conftest import REPO, fit_args


def fit_command(root, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "nla",
        *fit_args(
            root,
            run_dir,
            "--trainer.logger",
            "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir",
            str(run_dir),
            *extra,
            epochs=3,
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_fit_killed_mid_epoch_resumes_and_ends_with_the_same_epochs(how, rafdb_root, tmp_path, capsys):
    """SIGKILL takes the process alone; SIGTERM goes to the whole process group, DataLoader workers included, as a
    cluster's scheduler sends it, and must end in one line."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    pause = ["--trainer.callbacks+=tests.helpers.PauseMidEpoch", "--trainer.callbacks.marker", str(marker)]
    workers = ["--data.num_workers", "2"] if how == signal.SIGTERM else []
    process = subprocess.Popen(
        fit_command(rafdb_root, run_dir, *pause, *workers),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), process.communicate()[1][-3000:]
    os.killpg(process.pid, how)  # the process is inside epoch 1, at batch 2
    err = process.communicate(timeout=120)[1]
    assert process.returncode != 0
    if how == signal.SIGTERM:
        assert process.returncode == 143 and "Traceback" not in err and "killed by signal" not in err
        assert (
            "nla: error: stopped by SIGTERM; the checkpoints written so far are kept" in err
            and "--ckpt_path last" in err
        )
    interrupted = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert interrupted["epoch"] == 0  # the last checkpoint is the end of epoch 0

    capsys.readouterr()
    main(fit_command(rafdb_root, run_dir, *workers, "--ckpt_path", "last")[3:])  # the same command, in this process
    assert "changed settings" not in capsys.readouterr().err  # the same command changes nothing
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = math.ceil(42 / 8)
    assert final["epoch"] == 2 and final["global_step"] == 3 * steps_per_epoch
    assert final["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(1e-4 * 0.9**3)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1, 2]
    # The resumed process logged epochs 1 and 2 with the scheduler and LR of those epochs.
    metrics = max(run_dir.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime_ns)
    logged = {
        int(r["epoch"]): (float(r["train/covariance_schedule"]), float(r["train/lr"]))
        for r in csv.DictReader(open(metrics))
        if r.get("train/covariance_schedule")
    }
    assert sorted(logged) == [1, 2]
    for epoch, (schedule, lr) in logged.items():
        assert schedule == pytest.approx(1 - math.exp(-15 * epoch / 3))
        assert lr == pytest.approx(1e-4 * 0.9**epoch)
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config-fit.yaml").is_file()


def nla_0_2_settings(grouped: dict) -> dict:
    """A DataModule's checkpointed settings as nla 0.2 wrote them: every group's fields flat (``noise_rate``, ...)."""
    from nla.data.upgrade import MOVED_OPTIONS

    old_name = {new: old for old, new in MOVED_OPTIONS.items()}
    flat = {}
    for key, value in grouped.items():
        if isinstance(value, dict) and any(f"{key}.{name}" in old_name for name in value):
            flat.update({old_name[f"{key}.{name}"]: v for name, v in value.items() if f"{key}.{name}" in old_name})
        else:
            flat[key] = value
    return flat


@pytest.mark.slow
def test_a_checkpoint_of_nla_0_2_tests_exports_and_resumes(trained_run, rafdb_root, tmp_path):
    """Its flat data settings are read in today's groups: the same input, the same protocol, and a resume that
    changes nothing that defines the run goes on."""
    import shutil

    from nla.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    grouped = checkpoint["datamodule_hyper_parameters"]
    checkpoint["datamodule_hyper_parameters"] = nla_0_2_settings(grouped)
    assert (
        checkpoint["datamodule_hyper_parameters"]["image_size"] == 32
        and "preprocessing" not in (checkpoint["datamodule_hyper_parameters"])
    )
    torch.save(checkpoint, last)
    main(["test", "--ckpt_path", str(last), "--trainer.logger", "false"])
    assert json.loads((run / "test" / "metrics.json").read_text())["num_samples"] == 21
    main(["export", "--ckpt_path", str(last), "--format", "exported_program", "--output", str(tmp_path / "m.pt2")])
    exported = json.loads((tmp_path / "m.pt2.json").read_text())
    assert exported["image_size"] == 32 and exported["mean"] == pytest.approx(grouped["preprocessing"]["mean"])
    main(fit_args(rafdb_root, run, "--ckpt_path", "last", epochs=3))
    assert [e["epoch"] for e in json.loads((run / "summary.json").read_text())["epochs"]] == [0, 1, 2]


def test_a_sigterm_exit_leaves_no_handler_to_raise_on_the_workers_deaths(monkeypatch, capsys):
    """The DataLoader workers die of the same SIGTERM while nla exits; torch's SIGCHLD handler would raise from an exit
    finalizer (a traceback after the one line). A handler that raises as torch's does must be gone by then."""
    import nla.cli

    def raise_as_torch_does(number, frame):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    class Command:
        @staticmethod
        def main(argv):
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler sends it, while the command runs

    monkeypatch.setattr(nla.cli.importlib, "import_module", lambda name: Command)
    previous = signal.signal(signal.SIGCHLD, raise_as_torch_does)
    try:
        with pytest.raises(SystemExit) as stopped:
            nla.cli.run_command(["compare", "a", "b"])
        assert signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert stopped.value.code == 143
    assert "nla: error: stopped by SIGTERM" in capsys.readouterr().err
