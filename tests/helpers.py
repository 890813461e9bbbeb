"""Test helpers: the one-line error of a command, and callbacks that the CLI can load by class path, in a subprocess or
in the test's own process."""

import os
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import Callback
from torch.overrides import TorchFunctionMode

from nla.cli import main


class PauseMidEpoch(Callback):
    """At ``epoch`` and ``batch``, write ``marker`` and wait (until a SIGTERM arrives, at most ``wait_s``), so a
    test can kill the process mid-epoch."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 2, wait_s: float = 60.0) -> None:
        self.marker, self.epoch, self.batch, self.wait_s = Path(marker), epoch, batch, wait_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            deadline = time.monotonic() + self.wait_s
            while time.monotonic() < deadline and not trainer.received_sigterm:
                time.sleep(0.05)


class BlowUpWeights(Callback):
    """After the last training batch of ``epoch``, make one weight infinite, as a step with far too large a
    learning rate does: the loss of that step was finite, the weights it left are not."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                pl_module.model.get_classifier().weight[0, 0] = float("inf")


#: Tensor operations that make the host wait for a CUDA device: reading a value, data-dependent output sizes, and
#: copies between host and device that are not asynchronous.
SYNCING = {
    "item", "__bool__", "__float__", "__int__", "__index__", "__format__", "__repr__", "tolist", "numpy", "cpu",
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave",
}  # fmt: skip
#: Host-side batch assembly and the batch's transfer to the device (asynchronous there): (file, function or None).
HOST_SIDE = (("torch/utils/data/", None), ("nla/data/datasets.py", None), ("apply_func.py", "move_data_to_device"))


class SyncCounter(TorchFunctionMode):
    """Records, while ``counting``, every tensor operation that would make the host wait for a CUDA device, with
    the line of code outside torch that called it. On a CPU nothing waits, but the same calls would on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = False
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.counting and self._syncs(getattr(func, "__name__", ""), args, kwargs):
            site = self._site()
            if site is not None:
                self.calls.append(f"{func.__name__} at {site}")
        return func(*args, **kwargs)

    @staticmethod
    def _syncs(name: str, args, kwargs) -> bool:
        if name in SYNCING:
            return True
        if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):  # a boolean mask as an index
            indices = args[1] if len(args) > 1 else ()
            indices = indices if isinstance(indices, (tuple, list)) else (indices,)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        if name in ("tensor", "as_tensor"):  # host data placed on a device
            return kwargs.get("device") is not None
        return False

    @staticmethod
    def _site():
        frame, site = sys._getframe(2), None
        while frame is not None:
            name = frame.f_code.co_filename.replace(os.sep, "/")
            if any(part in name and function in (None, frame.f_code.co_name) for part, function in HOST_SIDE):
                return None
            if site is None and "/torch/" not in name and not name.endswith("helpers.py"):
                site = f"{Path(name).name}:{frame.f_lineno}"
            frame = frame.f_back
        return site


class CountSyncs(Callback):
    """The host waits of every training step, from one step's start to the next's (its forward, backward and
    optimiser step, its logging and callbacks, and the next batch's transfer and augmentation)."""

    def __init__(self) -> None:
        self.counter = SyncCounter()
        self.steps: list[list[str]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.counter.__enter__()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.counter.counting:
            self.steps.append(self.counter.calls)
        self.counter.counting, self.counter.calls = True, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.counter.counting = False
        self.counter.__exit__(None, None, None)


class PoisonBatch(Callback):
    """Makes the images of training batch ``batch`` of ``epoch`` NaN (in process ``rank`` only, where given), so that
    step's loss is NaN; records in ``PoisonBatch.unchanged`` whether the parameters were still those of just before
    that step when the run stopped."""

    unchanged: ClassVar[dict[str, bool]] = {}

    def __init__(self, epoch: int = 1, batch: int = 1, rank: int | None = None) -> None:
        self.epoch, self.batch, self.rank = epoch, batch, rank
        self.before: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        mine = self.rank is None or trainer.global_rank == self.rank
        if mine and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            batch.views.fill_(float("nan"))
            self.before = {k: p.detach().clone() for k, p in pl_module.named_parameters()}

    def on_exception(self, trainer, pl_module, exception) -> None:
        now = dict(pl_module.named_parameters())
        PoisonBatch.unchanged = {k: torch.equal(v, now[k]) for k, v in self.before.items()}


def fails(args, capsys) -> str:
    """Run ``nla`` and return its one-line error (the test fails on a traceback or a success)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("nla: error: ") and err.count("\n") == 1, err
    return err


FACT_BOUNDARIES = (
    r": expected |; got | is not an option of | \(did you mean |\?\)$| is now | is a group of settings now: give "
)


def facts(message: str) -> list[str]:
    """The facts a one-line message must carry, in the order it gives them: what it is about, what was expected,
    what was given, what to do instead; the words around them may change."""
    import re

    return [part for part in re.split(FACT_BOUNDARIES, message) if part]


def says(err: str, message: str, *more: str) -> None:
    """``err`` carries every fact of ``message`` (see :func:`facts`), or each of ``message`` and ``more``, in that
    order."""
    at = 0
    for fact in [message, *more] if more else facts(message):
        found = err.find(fact, at)
        assert found >= 0, f"{fact!r} missing from (or out of order in) {err!r}"
        at = found + len(fact)


def finish_by_hand(experiment, protocol, method, seed, extra=(), acc_matrix=((1, 1), (0, 2)), summary=None):
    """A finished cell as the runner leaves it: its summary (``summary``, else one epoch of ``acc_matrix`` over two
    classes), and runner.json's attempt with the command it ran."""
    import json

    from nla.experiment import fit_command
    from nla.experiment.attempts import config_digests
    from nla.records import Evaluation, RunSummary

    run_dir = experiment.run_dir(protocol, method, seed)
    run_dir.mkdir(parents=True)
    if summary is None:
        summary = RunSummary([Evaluation.from_confusion([list(r) for r in acc_matrix], ["a", "b"], epoch=0)])
    summary.write(run_dir)
    command = fit_command(experiment, protocol, method, seed, list(extra), resume=False)
    attempt = {"command": command[2:], "configs": config_digests(command), "started": 0.0, "wall_s": 60.0}
    (run_dir / "runner.json").write_text(json.dumps({"attempts": [{**attempt, "exit_code": 0}]}))
    return run_dir


class CtrlC(Callback):
    """Ctrl-C at the start of ``epoch``: Lightning's KeyboardInterrupt, as a user's."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt
