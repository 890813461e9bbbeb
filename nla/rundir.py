"""A run directory: what it holds, who may write into it, and where each command's outputs go.

- A fit writes into its run directory. A directory *holds a run* once a checkpoint or ``summary.json`` is
  in it; only resuming that run (``--ckpt_path last``, or a checkpoint of its own) may write there again.
  A directory where a fit failed before its first checkpoint holds no run and does not block.
- While a fit runs it holds an exclusive lock on the directory, so a second fit (a requeued job, say)
  cannot write into it at the same time. The lock dies with the process, even on SIGKILL. A fit that fails
  before it writes anything removes the directory it created.
- ``validate``, ``test`` and ``predict`` write into a fresh sub-folder of the run, ``<command>``,
  ``<command>-1``, ..., so no command overwrites another's outputs.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Optional


class RunDirectoryError(RuntimeError):
    """The run directory cannot be used by this command: it holds another run, or another process uses it."""


CHECKPOINTS = "checkpoints"
LOCK_FILE = ".nla.lock"


def holds_run(root: Path) -> bool:
    """Whether ``root`` holds a run that trained: a checkpoint or a summary."""
    return (root / "summary.json").is_file() or any((root / CHECKPOINTS).glob("*.ckpt"))


def run_of_checkpoint(ckpt_path: Path) -> Optional[Path]:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or ``None``."""
    parent = ckpt_path.resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else None


def missing_file(path: Path, what: str) -> FileNotFoundError:
    """The error for a ``path`` that is no file: absent, or a folder (then naming a checkpoint in it, if any)."""
    if not path.is_dir():
        return FileNotFoundError(f"{what} {str(path)!r} does not exist")
    inside = next((p for p in (path / "last.ckpt", path / CHECKPOINTS / "last.ckpt") if p.is_file()), None)
    hint = f"; did you mean {str(inside)!r}?" if inside else f"; give the path of the {what} itself"
    return FileNotFoundError(f"{what} {str(path)!r} is a folder, not a file{hint}")


def resolve_checkpoint(ckpt_path: str, root: Path) -> Path:
    """``last`` and ``best`` name the run's ``last.ckpt`` and its best-accuracy checkpoint; else a path."""
    folder = root / CHECKPOINTS
    if ckpt_path == "last":
        path = folder / "last.ckpt"
        if not path.is_file():
            raise RunDirectoryError(
                f"--ckpt_path last: there is no run to resume in {str(root)!r} (looked for "
                f"{str(path)!r}); leave out --ckpt_path to start a new run"
            )
        return path
    if ckpt_path == "best":
        found = sorted(folder.glob("best-acc-*.ckpt"))
        if not found:
            raise RunDirectoryError(f"--ckpt_path best: no best-acc-*.ckpt in {str(folder)!r}")
        return found[-1]
    path = Path(ckpt_path)
    if not path.is_file():
        raise missing_file(path, "checkpoint")
    return path


class RunLock:
    """An exclusive ``flock`` on ``<root>/.nla.lock``, held until :meth:`release` or the process ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd: Optional[int] = None
        self._created: Optional[Path] = None  # the outermost folder that acquire() created

    def acquire(self) -> RunLock:
        missing = [folder for folder in (self.root, *self.root.parents) if not folder.exists()]
        self._created = missing[-1] if missing else None
        path = self.root / LOCK_FILE
        while True:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a failed fit removed the folder it had created in between
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunDirectoryError(
                        f"run directory {str(self.root)!r} is in use by {holder}; wait for it to "
                        "finish, or use another --trainer.default_root_dir"
                    ) from None
                raise
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a file that its holder removed on release (see below): lock the one there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self, tidy: bool = False) -> None:
        """Let go of the lock. With ``tidy`` (a command that failed), the folders that :meth:`acquire` created go
        too when nothing but the lock file was written into them."""
        if self._fd is None:
            return
        if tidy and self._created is not None and [p.name for p in self.root.iterdir()] == [LOCK_FILE]:
            (self.root / LOCK_FILE).unlink()  # while locked: a process that opened it sees it is gone and retries
            for folder in (self.root, *self.root.parents):
                try:
                    folder.rmdir()
                except OSError:  # another process wrote into it meanwhile
                    break
                if folder == self._created:
                    break
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        found, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def fresh_folder(root: Path, name: str) -> Path:
    """Create and return ``root/name``, or ``root/name-1``, ``-2``, ... : the first that did not exist."""
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        candidate = root / (name if n == 0 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
