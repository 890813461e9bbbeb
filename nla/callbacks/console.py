"""What a run prints: the progress bar, a line after each validation, an estimate of a CPU run's time, and at the end
the best and last results with the run directory and how to test it."""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from tqdm import tqdm

from nla.records import RunSummary
from nla.rundir import CHECKPOINTS


def say(trainer: Trainer, text: str) -> None:
    """Print a line from the main process, above the progress bar when there is one (also once its bars are closed,
    where Lightning's ``print`` would drop the line)."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar) and bar.is_enabled:
        tqdm.write(text, file=sys.stdout)  # clears the live bars, prints, redraws them
        sys.stdout.flush()
    else:
        print(text, flush=True)


def evaluation_batch_end(bar: str) -> Callable[..., None]:
    """A :class:`ProgressBar`'s ``on_<stage>_batch_end`` hook for its bar named ``bar``: redrawn when due."""

    def hook(
        self: Any,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._draw_evaluation(getattr(self, bar), batch_idx)

    return hook


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, redrawn at most every ``refresh_seconds`` (or every ``refresh_rate`` batches).

    A batch the bar does not draw costs one read of the clock: no metric is read, nothing is written, and the host
    does not wait for the device. A redraw reads the loss from the device (the host waits for it), so on a GPU,
    where a step takes milliseconds, the bar draws one step in hundreds; on a CPU twice a second whatever the step.

    Args:
        refresh_rate: Batches between redraws; ``None``: by time, every ``refresh_seconds``.
        refresh_seconds: Seconds between redraws when ``refresh_rate`` is ``None``.
        leave: Leave each epoch's bar on the screen.

    Besides Lightning's metrics it shows ``loss``, the loss of the latest training step drawn.
    """

    def __init__(self, refresh_rate: Optional[int] = None, refresh_seconds: float = 0.5, leave: bool = False) -> None:
        if refresh_rate is not None and refresh_rate < 1:
            raise ValueError(f"refresh_rate must be at least 1 (or null, to redraw by time); got {refresh_rate}")
        if refresh_seconds < 0:
            raise ValueError(f"refresh_seconds must be 0 or more; got {refresh_seconds}")
        super().__init__(refresh_rate=refresh_rate or 1, leave=leave)
        self.every_batches, self.refresh_seconds = refresh_rate, refresh_seconds
        self._drawn_at = -math.inf

    def _due(self, bar: Any, n: int) -> bool:
        """Whether batch ``n`` (1-based) of ``bar``'s loop is drawn: its last batch always, others by count or time."""
        if bar is None or bar.disable:
            return False
        if self.every_batches is not None:
            return n % self.every_batches == 0 or n == bar.total
        now = monotonic()
        if n != bar.total and now - self._drawn_at < self.refresh_seconds:
            return False
        self._drawn_at = now
        return True

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._drawn_at = monotonic()  # the epoch's bar starts drawn at 0: its first redraw is refresh_seconds later

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if self._due(bar, batch_idx + 1):
            bar.n = batch_idx + 1
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws

    def _draw_evaluation(self, bar: Any, batch_idx: int) -> None:
        if self._due(bar, batch_idx + 1):
            bar.n = batch_idx + 1
            bar.refresh()

    on_validation_batch_end = evaluation_batch_end("val_progress_bar")
    on_test_batch_end = evaluation_batch_end("test_progress_bar")
    on_predict_batch_end = evaluation_batch_end("predict_progress_bar")

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Lightning's, with the loss of the latest training step (which nla does not log as a bar metric)."""
        metrics: dict[str, Any] = {}
        loss = getattr(pl_module, "last_loss", None)
        if isinstance(loss, torch.Tensor) and trainer.training:
            metrics["loss"] = f"{float(loss):.4f}"
        return {**metrics, **super().get_metrics(trainer, pl_module)}


class RunReport(Callback):
    """What a fit prints: one line after each validation, an estimate of the whole run's time after the first
    batches on a CPU, and at the end the best and last results, the run directory and how to test it.

    Args:
        estimate_after: Training batches of the first epoch to time before estimating (on a CPU).
    """

    def __init__(self, estimate_after: int = 10) -> None:
        self.estimate_after = estimate_after
        self._started: Optional[float] = None
        self._estimated = False
        self._loss_sum: Any = 0.0
        self._loss_count = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # An epoch shorter than Lightning's logging interval logs nothing until its end, and Lightning warns;
        # log at least once per epoch instead.
        batches = getattr(getattr(trainer, "datamodule", None), "train_batches", None)
        if batches:
            limit = trainer.limit_train_batches
            if isinstance(limit, int):
                batches = min(batches, limit)
            elif limit is not None:
                batches = max(1, int(batches * limit))
            trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, batches))  # type: ignore[attr-defined]

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        if not self._estimated:
            self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, dict) and "loss" in outputs:
            self._loss_sum = self._loss_sum + outputs["loss"].detach()  # summed on the device: no sync per step
            self._loss_count += 1
        if (
            self._estimated
            or self._started is None
            or batch_idx + 1 < min(self.estimate_after, trainer.num_training_batches)
        ):
            return
        self._estimated = True
        if trainer.strategy.root_device.type != "cpu":
            return
        per_batch = (time.perf_counter() - self._started) / (batch_idx + 1)
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        remaining_epochs = epochs - trainer.current_epoch
        if trainer.max_steps and trainer.max_steps > 0:
            total_batches = max(0, trainer.max_steps - trainer.global_step)
        else:
            total_batches = int(batches * remaining_epochs) if math.isfinite(batches) else 0
        hours = per_batch * total_batches / 3600
        say(
            trainer,
            f"on the CPU: {per_batch:.2f} s per training batch, so about {format_hours(hours)} for the "
            f"{total_batches} batches of this run (validation not counted). A GPU trains the paper's recipe "
            "in minutes; docs/experiments.md has a CPU-scale recipe",
        )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        history = getattr(pl_module, "validation_history", [])
        if trainer.sanity_checking or trainer.state.fn != "fit" or not history:
            return
        last = history[-1]
        best = max(history, key=lambda r: r.acc)
        best_mean = max(history, key=lambda r: r.mean_acc)
        loss_text = f"train loss {float(self._loss_sum) / self._loss_count:.4f}  " if self._loss_count else ""
        noise = getattr(pl_module, "label_noise", None)
        record = next((r for r in getattr(noise, "records", []) if r.epoch == last.epoch), None)
        noise_text = f"  flipped labels memorised {100 * record.memorised:.1f}%" if record is not None else ""
        say(
            trainer,
            f"epoch {last.epoch + 1}/{trainer.max_epochs}  {loss_text}val {last.line()}  (best acc "
            f"{100 * best.acc:.1f}% at epoch {best.epoch + 1}, best mean {100 * best_mean.mean_acc:.1f}% at "
            f"epoch {best_mean.epoch + 1}){noise_text}",
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        history = getattr(pl_module, "validation_history", [])
        if not trainer.is_global_zero or not history:
            return
        summary = RunSummary(history)
        root = Path(trainer.default_root_dir)
        say(
            trainer,
            f"done: last epoch {summary.last.line()}; best epoch {(summary.best.epoch or 0) + 1}: "
            f"{summary.best.line()}; best mean accuracy {100 * summary.best_by_mean_acc.mean_acc:.1f}% at epoch "
            f"{(summary.best_by_mean_acc.epoch or 0) + 1}",
        )
        if not trainer.checkpoint_callbacks:
            say(trainer, f"run directory: {root}   no checkpoint written (--trainer.enable_checkpointing false)")
            return
        best_checkpoint = next(
            (
                c.best_model_path
                for c in trainer.checkpoint_callbacks
                if isinstance(c, ModelCheckpoint) and c.monitor == "val/acc" and c.best_model_path
            ),
            None,
        )
        checkpoint = best_checkpoint or str(root / CHECKPOINTS / "last.ckpt")
        say(trainer, f"run directory: {root}   test it: nla test --ckpt_path {shlex.quote(checkpoint)}")


def format_hours(hours: float) -> str:
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{60 * hours:.0f} min" if hours * 60 >= 1 else f"{3600 * hours:.0f} s"
