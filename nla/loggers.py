"""Loggers as nla configures them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from nla.errors import UserError
from nla.settings import import_class


def wandb_available() -> bool:
    """Whether the wandb package can be imported (without importing it, which takes a second)."""
    try:
        return importlib.util.find_spec("wandb") is not None
    except ValueError:  # a module entry without a spec, as a test's stand-in leaves
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, without passing W&B settings it no longer has.

    Lightning passes ``anonymous=None`` to ``wandb.init`` even when it is not set, which current W&B answers
    with a warning on every run; this logger passes it only when set. Its folder is created before W&B
    looks for a git repository in it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("dir"):
            Path(self._wandb_init["dir"]).mkdir(parents=True, exist_ok=True)


def without_wandb(trainer: Namespace, asked: bool) -> Optional[str]:
    """Where the wandb package is missing, nla's default W&B logger in a command's trainer config becomes a CSV
    logger (``<run dir>/csv/version_<n>/metrics.csv``, a new version each command, so nothing is overwritten), and the
    note that says so is returned; a W&B logger the command ``asked`` for is a :class:`UserError` saying what to do."""
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    wandb_loggers = [
        logger
        for logger in loggers
        if isinstance(logger, Namespace) and issubclass(import_class(logger.class_path), LightningWandbLogger)
    ]
    if not wandb_loggers or wandb_available():
        return None
    if asked:
        raise UserError(
            "a W&B logger needs the wandb package, which is not installed: pip install wandb, or log to CSV "
            "(--trainer.logger lightning.pytorch.loggers.CSVLogger) or not at all (--trainer.logger false)"
        )
    csv = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=None, name="csv"))
    replaced = [csv if logger in wandb_loggers else logger for logger in loggers]
    trainer.logger = replaced if isinstance(trainer.logger, list) else replaced[0]
    return "nla: wandb is not installed: logging to CSV in <run dir>/csv instead (pip install wandb for W&B)"
