"""A fit's run directory and checkpoint, checked before anything trains: the trainer's limits, the checkpoint it
resumes from, the lock on the directory, a run already there, and the files of an attempt that never finished."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace

from nla.data.base import FERDataModule, dataset_arguments
from nla.errors import UserError
from nla.rundir import (
    CHECKPOINTS,
    RunDirectoryError,
    RunLock,
    check_resume,
    holds_run,
    resolve_checkpoint,
    run_of_checkpoint,
    set_aside_unstarted,
)
from nla.settings import import_class

#: Trainer settings that train nothing at 0, and what to give instead.
TRAINING_LIMITS = (
    ("max_epochs", "1 or more (-1: no limit)"),
    ("max_steps", "1 or more (-1: no limit)"),
    ("limit_train_batches", "a count of batches or a fraction above 0"),
)


def check_limits(trainer: Namespace) -> None:
    for limit, more in TRAINING_LIMITS:
        if trainer.get(limit) == 0:
            raise UserError(f"trainer.{limit}={trainer.get(limit)} trains nothing; give {more}")


def prepare_fit(
    config: Namespace, root: Path, load: Callable[[Path], dict[str, Any]], lock: bool = True
) -> tuple[Optional[RunLock], Optional[str]]:
    """Check a fit into ``root`` (``config`` is the fit's, its checkpoint read with ``load``): the lock it holds on the
    directory (none for a launched process, whose first process holds it) and a note on what a resume changes."""
    check_limits(config.trainer)
    config.trainer.default_root_dir = str(root)
    own = False
    if config.ckpt_path:
        path = resolve_checkpoint(config.ckpt_path, root)
        config.ckpt_path = str(path)
        own = run_of_checkpoint(path) == root.resolve()
        summarised = own and (root / "summary.json").is_file()
        check_resumable(load(path), path, config.trainer.max_epochs, own and not summarised)
    if not lock:
        return None, None
    run_lock = RunLock(root).acquire()
    try:
        return run_lock, check_directory(config, root, load, own)
    except BaseException:
        run_lock.release(tidy=True)
        raise


def check_directory(config: Namespace, root: Path, load: Callable[[Path], dict[str, Any]], own: bool) -> Optional[str]:
    """Resuming its own run (``own``): what the resume changes. Otherwise the directory must hold no run; the files
    of an attempt that never finished an epoch are set aside."""
    if own:
        for stale in (root / CHECKPOINTS).glob(".*.partial"):  # a save the last attempt was killed in
            stale.unlink()
        data_class = import_class(config.data.class_path) if config.data.get("class_path") else FERDataModule
        return check_resume(load(Path(config.ckpt_path)), config, dataset_arguments(data_class))
    if holds_run(root):
        how = "resume it with --ckpt_path last, or " if not config.ckpt_path else ""
        other = " (a checkpoint of another run starts a new run, which needs a directory of its own)"
        raise RunDirectoryError(
            f"run directory {str(root)!r} already holds a run; {how}start this one in another "
            f"--trainer.default_root_dir{other if config.ckpt_path else ''}"
        )
    moved = set_aside_unstarted(root)
    if moved:
        print(
            f"nla: {root} held the files of an attempt that never finished an epoch; this run starts anew, and they "
            f"are kept as {', '.join(moved)}",
            file=sys.stderr,
        )
    return None


def check_resumable(
    checkpoint: dict[str, Any], path: Path, max_epochs: Optional[int], unfinished_run: bool = False
) -> None:
    """A fit goes on from a checkpoint that holds the whole training state and leaves epochs to train; a best-epoch
    checkpoint (weights only) or a finished run's starts nothing, and says what to do instead. A run killed after its
    last checkpoint and before its summary (``unfinished_run``) resumes to write it."""
    instead = f"to start a new run from its weights, give --model.pretrained_weights {path}"
    if not checkpoint.get("optimizer_states"):
        raise UserError(f"{path} holds a model's weights only (a best-epoch checkpoint); a fit goes on from a run's "
                        f"last.ckpt; {instead}")  # fmt: skip
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    finished = progress.get("processed", 0)
    if max_epochs is not None and max_epochs >= 0 and finished >= max_epochs and not unfinished_run:
        raise UserError(f"{path} has trained {finished} epochs and --trainer.max_epochs is {max_epochs}: nothing would "
                        f"train; give more epochs, or {instead}")  # fmt: skip


def record_protocol_files(config: Namespace) -> None:
    """A relative label or matrix file as the absolute path it was found at (the working directory, else the data
    root), so the run's config and checkpoint name the file the user meant wherever they are read from."""
    init_args = (config.get("data") or Namespace()).get("init_args") or Namespace()
    protocol = init_args.get("protocol")
    if not isinstance(protocol, Namespace):
        return
    for key in ("train_label_file", "noise_matrix"):
        given = protocol.get(key)
        if given and not Path(given).is_absolute():
            found = Path(given) if Path(given).exists() or not init_args.get("root") else Path(init_args.root) / given
            protocol[key] = str(found.resolve())
