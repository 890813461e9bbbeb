"""Checkpoint files that are either the old one or the new one, never half of one."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it over the old.

    A run killed while saving (a SIGKILL, a cluster's grace period running out) leaves the previous
    ``last.ckpt`` whole, and the next save of that name removes the partial file it left. Lightning's
    own writer stages the file in the system's temporary folder, and where that is another file system
    than the run's (the usual case on a cluster) the final move copies into the target, which a kill
    can cut short. Remote paths (``s3://`` and the like) are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
