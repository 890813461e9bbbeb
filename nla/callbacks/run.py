"""Callbacks for a run directory: its config, checkpoints and accuracy summary (what a run prints is
:mod:`nla.callbacks.console`, what ``nla predict`` writes :mod:`nla.callbacks.predictions`).

Nothing a command writes replaces what another wrote: a fit writes into its run directory, and every
other command into a fresh sub-folder of it (see :mod:`nla.rundir`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from nla.callbacks.console import say
from nla.records import Evaluation, RunSummary
from nla.rundir import CHECKPOINTS, free_path


class RunConfigSaver(SaveConfigCallback):
    """Saves the full config of a command in its run directory and sends it to the loggers.

    A fit writes ``config.yaml``; a resumed fit ``config-fit.yaml`` (``-1``, ``-2``, ... when those exist).
    The config of an earlier attempt that never trained is kept as ``config-unstarted.yaml``. W&B gets
    the whole config (dataset, seed, epochs, precision, ...) and the file itself.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
        if trainer.is_global_zero:
            root = Path(trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            target = root / "config.yaml"
            if target.exists() and stage == "fit" and not (root / CHECKPOINTS / "last.ckpt").exists():
                target.rename(free_path(root / "config-unstarted.yaml"))  # an attempt that failed before training
            elif target.exists():
                target = free_path(root / f"config-{stage}.yaml")
            self.parser.save(self.config, str(target), skip_unset=False, multifile=self.multifile)
            self.path = target
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.path.read_text())  # what was just saved, rather than a second dump
        config.pop("config", None)
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config, "command": stage})
            if isinstance(logger, WandbLogger):  # the file itself (W&B keeps its own config.yaml in the same folder)
                shutil.copyfile(self.path, Path(logger.experiment.dir) / f"nla-{self.path.name}")


class RunCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose folder defaults to ``<run dir>/checkpoints``
    (Lightning's own default is inside the logger's folder when there is a logger). A command that evaluates a
    checkpoint saves none; its folder stays the checkpoint's own."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._evaluating = stage != "fit"
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, CHECKPOINTS)
        with warnings.catch_warnings():
            # The run-directory rules let a fit find checkpoints here only when it resumes its own run.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if getattr(self, "_evaluating", False) and state_dict.get("dirpath"):
            self.dirpath = state_dict["dirpath"]
        super().load_state_dict(state_dict)


PACKAGES = ("nla", "torchvision", "lightning", "torchmetrics", "timm", "numpy", "albumentations")


def environment(trainer: Trainer) -> dict[str, Any]:
    """The versions, the device and the CPU threads a trainer's numbers came from: runs of the same config and
    seed agree only where these agree (a CPU run's results also depend on its thread count)."""
    return machine(trainer.strategy.root_device, trainer.world_size)


def machine(device: torch.device = torch.device("cpu"), devices: int = 1) -> dict[str, Any]:
    """:func:`environment` for numbers computed without a trainer (an analysis script's)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,  # with its build (+cu132, +cpu), which the package metadata leaves out
        **{name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "devices": devices,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class AccuracySummary(Callback):
    """Writes ``summary.json`` when a fit ends, and ``metrics.json`` for ``nla validate`` and ``nla test``.

    FER papers validate on the test split and report the last epoch, the best epoch and the mean of the
    last ``last_k``; the summary holds all three, with overall, mean and per-class accuracy, and what was
    validated on (the split, its size, any batch limits), and under label noise what each training epoch did with
    the flipped labels. The history is part of the checkpoint, so a resumed run's summary covers every epoch.
    """

    def __init__(self, last_k: int = 5) -> None:
        if last_k < 1:
            raise ValueError(f"last_k {last_k} must be at least 1")
        self.last_k = last_k

    def summary(self, trainer: Trainer, pl_module: Any) -> RunSummary:
        datamodule = getattr(trainer, "datamodule", None)
        history = list(getattr(pl_module, "validation_history", []))
        validation = {
            "data": type(datamodule).__name__ if datamodule is not None else None,
            "split": getattr(datamodule, "val_split", None),
            "images": history[-1].num_samples if history else None,
            "limit_val_batches": trainer.limit_val_batches,
            "limit_train_batches": trainer.limit_train_batches,
            "max_epochs": trainer.max_epochs,
        }
        start = getattr(pl_module, "start", None)
        started = {"backbone": pl_module.hparams.get("backbone"), **start.to_dict()} if start is not None else {}
        used = getattr(datamodule, "preprocessing", None)
        given = used.to_dict() if used is not None else {}
        noise = list(getattr(getattr(pl_module, "label_noise", None), "records", []))
        return RunSummary(history, self.last_k, validation, environment(trainer), started, given, noise)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A fit stopped before its end (Ctrl-C, SIGTERM, an error) writes the summary of the epochs it has, marked
        unfinished: ``nla compare`` shows it, and a grid resumes the cell rather than counting it done."""
        if trainer.state.fn == "fit":
            self.on_fit_end(trainer, pl_module, finished=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule, finished: bool = True) -> None:
        summary = self.summary(trainer, pl_module)
        summary.finished = finished
        if not trainer.is_global_zero or not summary.epochs:
            return
        summary.write(trainer.default_root_dir)
        for logger in trainer.loggers:
            run_summary = getattr(getattr(logger, "experiment", None), "summary", None)
            if run_summary is not None and hasattr(run_summary, "update"):  # a W&B run's summary
                run_summary.update(
                    {
                        f"{key}/{name}": getattr(getattr(summary, key), name)
                        for key in ("last", "best")
                        for name in ("acc", "mean_acc")
                    }
                )

    def _write_metrics(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        record: Optional[Evaluation] = getattr(pl_module, "evaluations", {}).get(stage)
        if not trainer.is_global_zero or record is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        root = getattr(datamodule, "root", None)
        result = {
            "checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "data": {
                "class": type(datamodule).__name__ if datamodule else None,
                "root": str(Path(root).resolve()) if root else None,
                "split": "test" if stage == "test" else getattr(datamodule, "val_split", None),
            },
            **record.to_dict(),
            "environment": environment(trainer),
        }
        path = Path(trainer.default_root_dir) / "metrics.json"
        path.write_text(json.dumps(result, indent=2))
        excluded = f"; left out, the model has no such class: {record.excluded}" if record.excluded else ""
        say(trainer, f"{stage}: {record.line()} on {record.num_samples} images{excluded}; written to {path}")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write_metrics(trainer, pl_module, "test")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write_metrics(trainer, pl_module, "val")
