"""Counts, on a real GPU, the times a training step makes the host wait for the device.

``torch.cuda.set_sync_debug_mode("warn")`` makes torch warn at every synchronising CUDA call; this callback turns it
on for ``steps`` training steps after ``start`` and writes, per step, how many there were and where (the Python line
that made the call) to ``output`` as JSON. Load it into a fit with
``--trainer.callbacks+=benchmarks.gpu.syncs.CudaSyncCount --trainer.callbacks.output syncs.json``.
On a CPU it counts nothing: there is no CUDA device to wait for.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback


class CudaSyncCount(Callback):
    def __init__(self, output: str, start: int = 5, steps: int = 20) -> None:
        self.output, self.start, self.steps = Path(output), start, steps
        self.per_step: list[int] = []
        self.sites: Counter[str] = Counter()
        self._caught: Any = None
        self._records: list[warnings.WarningMessage] = []

    def _cuda(self, pl_module: Any) -> bool:
        return pl_module.device.type == "cuda"

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self._cuda(pl_module):
            return
        step = trainer.global_step
        if self._caught is not None:  # close the previous step's window
            syncs = [r for r in self._records if "synchronizing" in str(r.message)]
            self.per_step.append(len(syncs))
            self.sites.update(f"{Path(r.filename).name}:{r.lineno}" for r in syncs)
            self._records.clear()
        if step == self.start and self._caught is None:
            self._caught = warnings.catch_warnings(record=True)
            self._records = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif step >= self.start + self.steps and self._caught is not None:
            self._finish()

    def _finish(self) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._caught.__exit__(None, None, None)
        self._caught = None
        self.write()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._caught is not None:
            self._finish()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.device = str(pl_module.device)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._caught is not None:
            self._finish()
        elif not self.output.exists():  # no CUDA device, or fewer steps than asked for
            self.write()

    def write(self) -> None:
        steps = len(self.per_step)
        self.output.write_text(
            json.dumps(
                {
                    "device": getattr(self, "device", None),
                    "steps": steps,
                    "first_step": self.start,
                    "syncs_per_step": self.per_step,
                    "steps_without_sync": sum(1 for n in self.per_step if n == 0),
                    "where": dict(self.sites.most_common()),
                },
                indent=2,
            )
        )
