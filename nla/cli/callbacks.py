"""The callbacks of a command's trainer: nla's (``nla/defaults.yaml``), or a list given in their place, which keeps what
every run writes. Lightning reads ``trainer.callbacks`` as the whole list: a config that gives one replaces nla's, and
a run then wrote no ``last.ckpt`` and no ``summary.json``, without a word."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace, dict_to_namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase

from nla.errors import read_yaml
from nla.settings import import_class

DEFAULTS = Path(__file__).resolve().parents[1] / "defaults.yaml"

#: What every run writes, by the callback's class path and, for a checkpoint, its file name: added back to a list
#: given in place of nla's.
ESSENTIAL: dict[tuple[Optional[str], Optional[str]], str] = {
    ("nla.callbacks.RunCheckpoint", "last"): "last.ckpt",
    ("nla.callbacks.AccuracySummary", None): "summary.json",
    ("nla.callbacks.RunReport", None): "the epoch lines",
}


def is_callback(callback: Any, kind: type) -> bool:
    """Whether a trainer callback (a config entry or an object) is a ``kind``."""
    if isinstance(callback, Namespace) and callback.get("class_path"):
        return issubclass(import_class(callback.class_path), kind)
    return isinstance(callback, kind)


def identity(callback: Any) -> tuple[Optional[str], Optional[str]]:
    """A callback entry's class path and, for a checkpoint, its file name (``None`` for an object)."""
    if not isinstance(callback, Namespace):
        return None, None
    init_args = callback.get("init_args") or Namespace()
    return callback.get("class_path"), init_args.get("filename") if "Checkpoint" in str(callback.class_path) else None


def settle_callbacks(trainer: Namespace) -> Optional[str]:
    """The trainer's callbacks as a command uses them: without the checkpoints and the bar that
    ``enable_checkpointing false`` and ``enable_progress_bar false`` turn off (Lightning refuses both together), and,
    where a list replaced nla's, with what every run writes added back (:data:`ESSENTIAL`). A note of what was added
    back and what else such a list left out; ``None`` where nothing was added."""
    kinds = {"enable_checkpointing": ModelCheckpoint, "enable_progress_bar": ProgressBarBase}
    callbacks = list(trainer.get("callbacks") or [])
    off = [kind for setting, kind in kinds.items() if trainer.get(setting) is False]
    callbacks = [c for c in callbacks if not any(is_callback(c, kind) for kind in off)]
    defaults = [dict_to_namespace(entry) for entry in read_yaml(DEFAULTS)["trainer"]["callbacks"]]
    defaults = [entry for entry in defaults if not any(is_callback(entry, kind) for kind in off)]
    given = {identity(c) for c in callbacks}
    missing = [entry for entry in defaults if identity(entry) not in given]
    added = [entry for entry in missing if identity(entry) in ESSENTIAL]
    trainer.callbacks = callbacks + added
    if not added:  # a list that keeps what every run writes was made with nla's in mind
        return None
    dropped = [describe(entry) for entry in missing if identity(entry) not in ESSENTIAL]
    kept = ", ".join(ESSENTIAL[identity(entry)] for entry in added)
    return f"trainer.callbacks replaces nla's callbacks; added back what every run writes ({kept})" + (
        f"; left out: {', '.join(dropped)} (list them, or add yours with --trainer.callbacks+=)" if dropped else ""
    )


def describe(entry: Namespace) -> str:
    class_path, filename = identity(entry)
    name = str(class_path).rsplit(".", 1)[-1]
    return f"{name} {str(filename).split('-{')[0]}" if filename else name
