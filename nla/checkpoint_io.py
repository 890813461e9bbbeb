"""Checkpoint files that are either the old one or the new one, never half of one."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nla.errors import UserError

#: Below this much free space, a failed write is taken for a full disk.
FULL_DISK_BYTES = 64 * 1024 * 1024


class NonFiniteCheckpointError(UserError, FloatingPointError):
    """A checkpoint that would hold NaN or infinite weights."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_finite(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse to write a checkpoint whose weights are NaN or infinite: the last good one must survive."""
    for name, tensor in (checkpoint.get("state_dict") or {}).items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteCheckpointError(
                f"not writing {path.name}: its weights are not finite ({name}); the last "
                "good checkpoint is kept. Resume with --ckpt_path last and a lower --model.lr"
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it over the old.

    A run killed while saving (a SIGKILL, a cluster's grace period running out) leaves the previous
    ``last.ckpt`` whole, and the next save of that name removes the partial file it left. Lightning's
    own writer stages the file in the system's temporary folder, and where that is another file system
    than the run's (the usual case on a cluster) the final move copies into the target, which a kill
    can cut short. A checkpoint of non-finite weights is never written, and files get the permissions of
    every other output (the umask's), not the temporary file's 0600. Remote paths (``s3://`` and the
    like) are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        check_finite(checkpoint, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, path)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise OSError(error.errno, error.strerror, str(path)) from None  # name the checkpoint, not the temporary
        except RuntimeError:  # torch's writer wraps the OS's refusal ("file write failed"): a full disk, most often
            Path(temporary).unlink(missing_ok=True)
            if shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
