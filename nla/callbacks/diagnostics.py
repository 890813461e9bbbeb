"""NAW diagnostics: the paper's figures, drawn from a live run and logged to W&B and as PNG files.

- ``naw_weight_boxplot``: per-class distributions of the NAW weights in an epoch (Fig. 5);
- ``kernel_scatter``: samples at (p_GT, p_NN), coloured by true or false prediction, over the contours of
  the two kernels at that epoch (Figs. 1 and 3);
- ``class_accuracy_curves``: per-class test accuracy over the epochs (Fig. 6);
- ``confusion_matrix_figure``;
- ``noise_weight_histogram``: under label noise, the weights of flipped against clean samples, with the
  AUROC of "low weight" as a detector of flipped labels (:mod:`nla.memorisation`).

:class:`SampleRecord` keeps, for every training image and epoch, its NAW weight, ``p_GT``, ``p_NN`` and
predicted class in ``<run dir>/per_sample.npz``, for studies of what the weight tracks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer
from matplotlib.figure import Figure  # figures without pyplot: no GUI backend, no global state

from nla import losses
from nla.records import Evaluation, NoiseRecord


def naw_weight_boxplot(weights: np.ndarray, labels: np.ndarray, class_names: Sequence[str], epoch: int) -> Figure:
    figure = Figure(figsize=(1.1 * len(class_names) + 2, 3.6))
    axis = figure.subplots()
    groups = [weights[labels == k] for k in range(len(class_names))]
    axis.boxplot([g if len(g) else [np.nan] for g in groups], showfliers=False)
    axis.set_xticks(range(1, len(class_names) + 1), class_names, rotation=30)
    axis.set_ylabel("NAW weight w")
    axis.set_title(f"NAW weight per class, epoch {epoch}")
    figure.tight_layout()
    return figure


def kernel_scatter(
    p_gt: np.ndarray,
    p_nn: np.ndarray,
    prediction_true: np.ndarray,
    epoch: int,
    schedule: float,
    kernels: losses.NAWKernels = losses.NAWKernels(),
    max_points: int = 4000,
    seed: int = 0,
) -> Figure:
    if len(p_gt) > max_points:
        keep = np.random.default_rng(seed).choice(len(p_gt), max_points, replace=False)
        p_gt, p_nn, prediction_true = p_gt[keep], p_nn[keep], prediction_true[keep]
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    true_cov = losses.kernel_covariance(kernels.true_major_std, kernels.true_axis_ratio, -1, schedule)
    false_cov = losses.kernel_covariance(kernels.false_major_std, kernels.false_axis_ratio, +1)
    figure = Figure(figsize=(5, 4.6))
    axis = figure.subplots()
    for cov, mean, colour in ((true_cov, kernels.true_mean, "tab:blue"), (false_cov, kernels.false_mean, "tab:red")):
        density = losses.gaussian_kernel(gx, gy, mean, cov).numpy()
        axis.contour(gx.numpy(), gy.numpy(), density, levels=6, colors=colour, linewidths=0.8, alpha=0.7)
    axis.scatter(p_gt[prediction_true], p_nn[prediction_true], s=3, c="tab:blue", alpha=0.35, label="prediction true")
    axis.scatter(p_gt[~prediction_true], p_nn[~prediction_true], s=3, c="tab:red", alpha=0.35, label="prediction false")
    axis.plot([0, 1], [1, 0], color="grey", linewidth=0.6)
    axis.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="p_GT (given label)",
        ylabel="p_NN (nearest negative)",
        title=f"NAW kernels and (p_GT, p_NN), epoch {epoch}, CS = {schedule:.2f}",
    )
    axis.legend(loc="upper right", fontsize=8, markerscale=3)
    figure.tight_layout()
    return figure


def class_accuracy_curves(history: Sequence[Evaluation], class_names: Sequence[str]) -> Figure:
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    epochs = [record.epoch or 0 for record in history]
    for name in class_names:
        values = [record.class_acc.get(name) for record in history]
        axis.plot(epochs, [np.nan if v is None else 100 * v for v in values], marker=".", label=name)
    axis.plot(epochs, [100 * record.mean_acc for record in history], color="black", linestyle="--", label="mean")
    axis.set(xlabel="epoch", ylabel="accuracy (%)", title="Per-class accuracy over the epochs", ylim=(0, 100))
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    return figure


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    figure = Figure(figsize=(0.7 * len(class_names) + 2.5, 0.7 * len(class_names) + 2))
    axis = figure.subplots()
    axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            axis.text(
                j,
                i,
                f"{100 * normalised[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if normalised[i, j] > 0.5 else "black",
            )
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    return figure


def noise_weight_histogram(weights: np.ndarray, flipped: np.ndarray, record: NoiseRecord) -> Figure:
    figure = Figure(figsize=(5, 3.4))
    axis = figure.subplots()
    bins = np.linspace(0, max(float(weights.max()), 1e-6), 40).tolist()
    axis.hist(weights[~flipped], bins=bins, alpha=0.6, density=True, label=f"clean (mean {record.weight_clean:.3f})")
    axis.hist(weights[flipped], bins=bins, alpha=0.6, density=True, label=f"flipped (mean {record.weight_flipped:.3f})")
    auroc = math.nan if record.auroc_naw_weight is None else record.auroc_naw_weight
    axis.set(
        xlabel="NAW weight w",
        ylabel="density",
        title=f"NAW weights of clean and flipped labels, epoch {record.epoch}\n"
        f"AUROC of low weight as noise detector: {auroc:.3f}",
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


class SampleRecord(Callback):
    """Per training image and epoch: the NAW weight, ``p_GT``, ``p_NN``, the predicted class and the label trained
    on, written to ``<run dir>/per_sample.npz`` after every epoch (arrays of epochs x images; NaN or -1 where an
    image was not seen, as with ``limit_train_batches``).
    Add it with ``--trainer.callbacks+=nla.callbacks.SampleRecord``.

    The values are those of the training step: the augmented view, with the weights as they were before that
    step's update. A resumed run continues the file it finds.
    """

    FILE = "per_sample.npz"

    def __init__(self) -> None:
        self._record: dict[str, np.ndarray] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        gathered = epoch_training_outputs(pl_module)
        if gathered is None or "index" not in gathered or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / self.FILE
        index = gathered["index"].long().numpy()
        train = getattr(getattr(trainer, "datamodule", None), "splits", {}).get("train")
        images = len(train) if train is not None else int(index.max()) + 1
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else trainer.current_epoch + 1
        if not self._record and path.is_file():
            with np.load(path) as saved:
                self._record = {key: saved[key] for key in saved.files}
        probs, labels = gathered["probs"], gathered["labels"]
        values = {
            "weight": gathered["weights"].numpy(),
            "p_gt": probs.gather(1, labels[:, None]).squeeze(1).numpy(),
            "p_nn": losses.nearest_negative(probs, labels).numpy(),
            "predicted": probs.argmax(1).numpy(),
            "label": labels.numpy(),
        }
        for key, value in values.items():
            integer = key in ("predicted", "label")
            shape = (max(epochs, trainer.current_epoch + 1), images)
            if key not in self._record or self._record[key].shape[0] < shape[0]:
                fresh = np.full(shape, -1 if integer else np.nan, dtype=np.int16 if integer else np.float32)
                if key in self._record:
                    fresh[: len(self._record[key])] = self._record[key]
                self._record[key] = fresh
            self._record[key][trainer.current_epoch, index] = value
        partial = path.with_name(f".{self.FILE}.{os.getpid()}.partial.npz")
        np.savez_compressed(partial, **self._record)  # type: ignore[arg-type]  # numpy types allow_pickle first
        os.replace(partial, path)


class NAWDiagnostics(Callback):
    """Draws the NAW figures during training and saves them under ``<run dir>/figures`` and to W&B.

    Under label noise it also draws the weights of the flipped and the clean labels (the figures of each epoch's
    :class:`~nla.records.NoiseRecord`, which the module measures and logs under ``noise/``).

    It reads what :class:`~nla.module.NLAModule` publishes: the outputs of ``training_step`` (probabilities,
    labels, weights, sample indices), ``criterion``, ``class_names``, ``validation_history`` and
    ``evaluations``, and its ``epoch_training_outputs()`` (weights, probabilities and labels gathered on the device
    and moved to the host once per epoch, so the training step never waits for them).

    Args:
        every_n_epochs: Draw the per-epoch figures every this many epochs (and always at the last).
        max_points: At most this many samples in the scatter plot.
        log_to_loggers: Also send the figures to loggers that take images (W&B).
    """

    def __init__(self, every_n_epochs: int = 1, max_points: int = 4000, log_to_loggers: bool = True) -> None:
        self.every_n_epochs, self.max_points, self.log_to_loggers = every_n_epochs, max_points, log_to_loggers

    def _draws_this_epoch(self, trainer: Trainer) -> bool:
        last = trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1
        return (trainer.current_epoch % self.every_n_epochs == 0) or last

    # --- drawing ------------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        gathered = epoch_training_outputs(pl_module)
        if gathered is None or not trainer.is_global_zero:
            return
        probs, labels, given = gathered["probs"], gathered["labels"], gathered["weights"]
        epoch = trainer.current_epoch
        criterion = pl_module.criterion
        schedule = criterion.schedule(epoch, pl_module.schedule_epochs)
        p_gt = probs.gather(1, labels[:, None]).squeeze(1).numpy()
        p_nn = losses.nearest_negative(probs, labels).numpy()
        prediction_true = losses.prediction_true(probs, labels).numpy()
        weights, labels_np = given.numpy(), labels.numpy()
        names, draw = pl_module.class_names, self._draws_this_epoch(trainer)
        if draw:
            self._emit(trainer, "naw_weights_per_class", naw_weight_boxplot(weights, labels_np, names, epoch))
            self._emit(
                trainer,
                "naw_kernel_scatter",
                kernel_scatter(p_gt, p_nn, prediction_true, epoch, schedule, criterion.config.kernels, self.max_points),
            )
        noise = getattr(pl_module, "label_noise", None)  # measured by the module after the epoch's last step
        true = getattr(noise, "true_labels", None)
        record = next((r for r in getattr(noise, "records", []) if r.epoch == epoch), None)
        if draw and record is not None and true is not None and "index" in gathered:
            flipped = true[gathered["index"]].numpy() != labels_np
            self._emit(trainer, "naw_weights_noise", noise_weight_histogram(weights, flipped, record))

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        record: Optional[Evaluation] = pl_module.evaluations.get("val")
        if record is None:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and self._draws_this_epoch(trainer) and pl_module.validation_history:
            self._emit(
                trainer,
                "class_accuracy_curves",
                class_accuracy_curves(pl_module.validation_history, pl_module.class_names),
                per_epoch=False,
            )
        if not fitting or self._draws_this_epoch(trainer):
            title = (
                f"Confusion matrix (rows: true), epoch {trainer.current_epoch}"
                if fitting
                else "Confusion matrix (rows: true)"
            )
            self._emit(
                trainer,
                "confusion_matrix",
                confusion_matrix_figure(np.asarray(record.confusion), pl_module.class_names, title),
                per_epoch=fitting,
            )

    def on_test_end(self, trainer: Trainer, pl_module: Any) -> None:
        record: Optional[Evaluation] = pl_module.evaluations.get("test")
        if record is not None and trainer.is_global_zero:
            self._emit(
                trainer,
                "confusion_matrix",
                confusion_matrix_figure(
                    np.asarray(record.confusion), pl_module.class_names, "Test confusion matrix (rows: true)"
                ),
                per_epoch=False,
            )

    def _emit(self, trainer: Trainer, name: str, figure: Figure, per_epoch: bool = True) -> None:
        folder = Path(trainer.default_root_dir) / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"{name}-epoch{trainer.current_epoch:03d}.png" if per_epoch else f"{name}.png")
        figure.savefig(path, dpi=110)
        if self.log_to_loggers:
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key=f"figures/{name}", images=[str(path)], step=trainer.global_step)


def epoch_training_outputs(pl_module: Any) -> Optional[dict[str, torch.Tensor]]:
    """What the module's training steps gave this epoch, on the host
    (:meth:`nla.module.NLAModule.epoch_training_outputs`); ``None`` for a module that does not keep them."""
    gather = getattr(pl_module, "epoch_training_outputs", None)
    return gather() if callable(gather) else None
