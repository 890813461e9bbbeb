"""Loggers as nla configures them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


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
