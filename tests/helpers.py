"""Test-only callbacks that the CLI can load by class path, in a subprocess or in the test's own process."""

import os
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback


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
