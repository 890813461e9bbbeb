"""Checkpoint files are the old one or the new one, never half of one, and never of non-finite weights."""

import subprocess
import sys
import time

import pytest
import torch

from nla import checkpoint_io
from nla.checkpoint_io import AtomicCheckpointIO, NonFiniteCheckpointError


def test_a_checkpoint_save_cut_short_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
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
    assert io.load_checkpoint(path)["epoch"] == 1 and torch.equal(
        io.load_checkpoint(path)["weights"], torch.arange(10.0)
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # the partial file is cleaned up


def test_non_finite_weights_are_never_written(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(NonFiniteCheckpointError, match=r"not writing last.ckpt: its weights are not finite \(w\)"):
        io.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.tensor([1.0, float("nan"), 0.0])}}, path)
    assert io.load_checkpoint(path)["epoch"] == 1


@pytest.mark.slow
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
    assert checkpoint["version"] >= 2 and torch.equal(
        checkpoint["weights"], torch.full((8_000_000,), float(checkpoint["version"]))
    )
