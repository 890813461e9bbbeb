"""Test-only callbacks that the CLI can load by class path in a subprocess."""

import os
import time
from pathlib import Path

from lightning.pytorch import Callback


class PauseMidEpoch(Callback):
    """At ``epoch`` and ``batch``, write ``marker`` and wait, so a test can kill the process mid-epoch."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 2, wait_s: float = 60.0) -> None:
        self.marker, self.epoch, self.batch, self.wait_s = Path(marker), epoch, batch, wait_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            time.sleep(self.wait_s)
