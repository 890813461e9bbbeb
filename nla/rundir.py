"""A run directory: what it holds, who may write into it, and where each command's outputs go.

- A fit writes into its run directory. A directory *holds a run* once a checkpoint or ``summary.json`` is
  in it; only resuming that run (``--ckpt_path last``, or a checkpoint of its own) may write there again.
  A directory where a fit failed before its first checkpoint holds no run and does not block.
- While a fit runs it holds an exclusive lock on the directory, so a second fit (a requeued job, say)
  cannot write into it at the same time. The lock dies with the process, even on SIGKILL. A fit that fails
  before it writes anything removes the directory it created.
- ``validate``, ``test`` and ``predict`` write into a fresh sub-folder of the run, ``<command>``,
  ``<command>-1``, ..., so no command overwrites another's outputs.
- A fit with no ``--trainer.default_root_dir`` writes into ``runs/<dataset>``; an evaluation command into the run of
  its checkpoint. Loggers left without a folder or a name write into the run directory and take its name.
- A resumed fit may change what can change mid-run (learning rate, schedule, criterion), never what defines the run
  (:data:`FIXED_ON_RESUME`: the backbone, the data, the label protocol, the input).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace

from nla.errors import UserError
from nla.settings import CLASS_PATH_KEY, import_class, leaves, same


class RunDirectoryError(UserError, RuntimeError):
    """The run directory cannot be used by this command: it holds another run, or another process uses it."""


CHECKPOINTS = "checkpoints"
LOCK_FILE = ".nla.lock"


def free_path(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``stem-1.suffix``, ``stem-2.suffix``, ... (the first free one)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def holds_run(root: Path) -> bool:
    """Whether ``root`` holds a run: a summary (it finished), or a ``last.ckpt`` to resume from. Best-epoch
    checkpoints alone (an attempt killed while saving its first epoch) are weights a resume cannot go on from."""
    return (root / "summary.json").is_file() or (root / CHECKPOINTS / "last.ckpt").is_file()


#: What an attempt may leave in its run directory before its first ``last.ckpt``: kept, under another name, when a new
#: run starts there, so that a run directory holds only what its own run wrote (config.yaml: see RunConfigSaver).
UNSTARTED_LEFTOVERS = ("train_labels.txt", "per_sample.npz", "figures", CHECKPOINTS)


def set_aside_unstarted(root: Path) -> list[str]:
    """Move what an attempt that never reached its first ``last.ckpt`` left in ``root`` to ``<name>-unstarted``
    (``-unstarted-1``, ... when taken), and a killed save's partial files with it; returns the new names."""
    moved = []
    for name in UNSTARTED_LEFTOVERS:
        path = root / name
        if path.exists():
            aside = free_path(path.with_name(f"{path.stem}-unstarted{path.suffix}"))
            path.rename(aside)
            moved.append(aside.name)
    return moved


def run_of_checkpoint(ckpt_path: Path) -> Optional[Path]:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or ``None``."""
    parent = ckpt_path.resolve().parent
    return parent.parent if parent.name == CHECKPOINTS else None


def missing_file(path: Path, what: str) -> FileNotFoundError:
    """The error for a ``path`` that is no file: absent, or a folder (then naming a checkpoint in it, if any)."""
    if path.exists() and not path.is_dir():  # a FIFO, a socket, a device
        return FileNotFoundError(f"{what} {str(path)!r} is not a regular file; give the path of a file")
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
                f"--ckpt_path last: there is no run in {str(root)!r} (looked for {str(path)!r}); name the run with "
                "--trainer.default_root_dir or give a checkpoint's path (nla fit without --ckpt_path starts a new run)"
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
    """An exclusive ``flock`` on ``<root>/.nla.lock``, held until :meth:`release` or the process ends; ``what`` and
    ``instead`` word the refusal (a run directory, or a grid's folder)."""

    def __init__(
        self, root: Path, what: str = "run directory", instead: str = "use another --trainer.default_root_dir"
    ) -> None:
        self.root, self.what, self.instead = root, what, instead
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
                        f"{self.what} {str(self.root)!r} is in use by {holder}; wait for it to finish, or "
                        f"{self.instead}"
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


#: Settings a resumed fit may not change, by group: they define the model, the training data or the input. A
#: dataset's own arguments (its layout, its classes, its label files) are fixed too: see :func:`check_resume`.
FIXED_ON_RESUME = {
    "model": ("backbone", "backbone_args", "step_graph"),
    "data": ("protocol", "holdout", "preprocessing", "val_split"),
}

#: Why a setting of :data:`FIXED_ON_RESUME` is fixed, where it is not what the model or its data are.
FIXED_BECAUSE = {
    "model.step_graph": "Lightning counts the steps of the graph step and of the eager loop apart, and a switched run "
    "would count from 0 again (max_steps, the logs)",
}

#: Model settings that only say how the weights start: a resumed run takes its weights from its checkpoint.
START_SETTINGS = ("num_classes", "class_names", "pretrained", "pretrained_weights")


def check_resume(checkpoint: dict[str, Any], config: Namespace, dataset_arguments: Iterable[str] = ()) -> Optional[str]:
    """Refuse a resume that changes what defines the run (:data:`FIXED_ON_RESUME`, and ``dataset_arguments``, the
    data class's own), naming the setting and both values; return a note of the settings that do change, or
    ``None``. The input the run settled on when it started (from its start, its data or a measurement) is kept."""
    root = config.trainer.default_root_dir
    saved_data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    old_class, new_class = saved_data.get(CLASS_PATH_KEY), config.data.get("class_path")
    if old_class and new_class and old_class != new_class:
        raise RunDirectoryError(
            f"cannot resume {root!r} with --data {new_class}: the run was trained on "
            f"{old_class}; start a new run with another --trainer.default_root_dir"
        )
    given, settled = config.data.init_args.get("preprocessing"), saved_data.get("preprocessing") or {}
    for key, value in settled.items():  # settled when the run started: keep what the model was trained with
        if given is not None and given.get(key) is None and value is not None:
            given[key] = tuple(value) if isinstance(value, list) else value
    old = {**leaves(checkpoint.get("hyper_parameters") or {}, "model."), **leaves(saved_data, "data.")}
    new = {**leaves(config.model, "model."), **leaves(config.data.init_args, "data.")}
    fixed = {"model": set(FIXED_ON_RESUME["model"]), "data": {*FIXED_ON_RESUME["data"], *dataset_arguments}}
    changed = []
    for key, value in new.items():
        group, name = key.split(".", 1)
        if key not in old or name.startswith("_") or same(old[key], value):
            continue
        if group == "model" and name in START_SETTINGS:
            continue
        if name.split(".")[0] in fixed[group]:
            kept = f"a resumed run keeps its {'model' if group == 'model' else 'training data and input'}"
            raise RunDirectoryError(
                f"cannot resume {root!r} with {key}={value!r}: the run was trained with {old[key]!r}, and "
                f"{FIXED_BECAUSE.get(key, kept)}; resume with {old[key]!r}, or start a new run with another "
                "--trainer.default_root_dir"
            )
        changed.append(f"{key} {old[key]!r} -> {value!r}")
    if not changed:
        return None
    return (
        f"nla: resuming {root} with changed settings, which apply from epoch {checkpoint.get('epoch', 0) + 2} on "
        "(counted from 1, as the progress lines count): "
        f"{'; '.join(changed)}"
    )


def default_run_dir(config: Namespace, base_class: type) -> Path:
    """Where a command writes when ``--trainer.default_root_dir`` is not given: the run of its checkpoint, else
    ``runs/<the dataset's name>`` (``base_class``'s name when no dataset is chosen)."""
    if config.trainer.default_root_dir:
        return Path(config.trainer.default_root_dir)
    ckpt = config.get("ckpt_path")
    if ckpt and ckpt not in ("last", "best") and Path(ckpt).is_file():
        run = run_of_checkpoint(Path(ckpt))
        return run if run is not None else Path("runs") / Path(ckpt).stem
    data = config.get("data")
    data_class = import_class(data.class_path) if isinstance(data, Namespace) and data.get("class_path") else base_class
    return Path("runs") / getattr(data_class, "name", "data")


def name_loggers(trainer: Namespace, run: Path, commands: tuple[str, ...]) -> None:
    """Loggers whose folder or run name is left unset write into the run directory and take its name (an
    evaluation command's folder, ``<command>[-n]`` of one of ``commands``, is named after its run too)."""
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init_args is None:
            continue
        if "save_dir" in init_args and init_args.save_dir in (None, ".", "./"):
            init_args.save_dir = str(run if trainer.default_root_dir is None else trainer.default_root_dir)
        if "name" in init_args and init_args.name is None:
            parent = run.parent.name if re.sub(r"-\d+$", "", run.name) in commands else None
            init_args.name = f"{parent}/{run.name}" if parent else run.name
