"""Callbacks for a run directory: its config, its accuracy summary and its predictions, never overwriting anything."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn


def free_path(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``stem-1.suffix``, ``stem-2.suffix``, ... (the first free one)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


class RunConfigSaver(SaveConfigCallback):
    """Saves the full config of every command in the run directory (``trainer.default_root_dir``).

    The first fit writes ``config.yaml``; later commands (test, predict, a resumed fit) write
    ``config-<command>.yaml``, ``config-<command>-1.yaml``, ... so no earlier config is overwritten.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
        if trainer.is_global_zero:
            root = Path(trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            target = root / "config.yaml"
            if target.exists() or stage != "fit":
                target = free_path(root / f"config-{stage}.yaml")
            self.parser.save(self.config, str(target), skip_none=False, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True


def _metric(trainer: Trainer, key: str) -> Optional[float]:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


class AccuracySummary(Callback):
    """Records the validation accuracy of every epoch and writes ``summary.json`` when fitting ends.

    FER papers validate on the test split and report the last epoch, the best epoch and the mean of
    the last five; the summary holds all three, with overall, mean and per-class accuracy. The
    history is part of the checkpoint, so a resumed run's summary covers every epoch.
    """

    def __init__(self, stage: str = "val", last_k: int = 5, filename: str = "summary.json") -> None:
        self.stage, self.last_k, self.filename = stage, last_k, filename
        self.history: list[dict[str, Any]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = _metric(trainer, f"{self.stage}/acc")
        if acc is None:
            return
        names = getattr(pl_module, "class_names", [])
        record = {
            "epoch": trainer.current_epoch,
            "acc": acc,
            "mean_acc": _metric(trainer, f"{self.stage}/mean_acc"),
            "class_acc": {name: _metric(trainer, f"{self.stage}/acc_{name}") for name in names},
        }
        self.history = [r for r in self.history if r["epoch"] != record["epoch"]] + [record]

    def summary(self) -> dict[str, Any]:
        if not self.history:
            return {"epochs": []}
        last = self.history[-1]
        best = max(self.history, key=lambda r: r["acc"])
        best_mean = max(self.history, key=lambda r: r["mean_acc"])
        window = self.history[-self.last_k:]

        def average(key: str, name: Optional[str] = None) -> float:
            values = [r[key] if name is None else r[key][name] for r in window]
            return math.fsum(values) / len(values)

        mean_last = {
            "epochs": [r["epoch"] for r in window],
            "acc": average("acc"),
            "mean_acc": average("mean_acc"),
            "class_acc": {name: average("class_acc", name) for name in last["class_acc"]},
        }
        return {"last": last, "best": best, "best_by_mean_acc": best_mean, f"mean_last_{self.last_k}": mean_last,
                "epochs": self.history}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        summary = self.summary()
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
        for logger in trainer.loggers:
            experiment_summary = getattr(getattr(logger, "experiment", None), "summary", None)
            if experiment_summary is not None and hasattr(experiment_summary, "update"):  # W&B run summary
                experiment_summary.update({f"{key}/{k}": summary[key][k] for key in ("last", "best") for k in ("acc", "mean_acc")})

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``nla test`` writes its metrics to ``test_metrics.json`` (or the next free ``test_metrics-<n>.json``)."""
        if not trainer.is_global_zero:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")}
        if metrics:
            path = free_path(Path(trainer.default_root_dir) / "test_metrics.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"checkpoint": trainer.ckpt_path, "metrics": metrics}, indent=2))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class PredictionWriter(BasePredictionWriter):
    """Writes ``nla predict`` results to a CSV: path, predicted class, then the probability of every class.

    Unreadable files get a row with an empty prediction and the reason, and a warning counts them.

    Args:
        output: The CSV to write; ``None`` writes ``predictions.csv`` in the run directory, or the next
            free ``predictions-<n>.csv`` if that exists. An explicit path that exists is refused.
    """

    def __init__(self, output: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.path: Optional[Path] = None
        self._handle = None
        self._writer = None
        self.unreadable: list[str] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output:
            path = Path(self.output)
            if path.exists():
                raise FileExistsError(f"prediction file {str(path)!r} exists and is not overwritten; choose another output")
        else:
            path = free_path(Path(trainer.default_root_dir) / "predictions.csv")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.unreadable = path, []
        self._handle = open(path, "w", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(["path", "prediction", *[f"prob_{name}" for name in pl_module.class_names], "error"])

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        names = pl_module.class_names
        for path, probs, ok, error in zip(prediction["path"], prediction["probs"], prediction["ok"], prediction["error"]):
            if bool(ok):
                self._writer.writerow([path, names[int(probs.argmax())], *[f"{p:.6f}" for p in probs.tolist()], ""])
            else:
                self.unreadable.append(path)
                self._writer.writerow([path, "", *[""] * len(names), error])

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.unreadable:
            rank_zero_warn(f"{len(self.unreadable)} unreadable image(s) were reported in {self.path}: {self.unreadable[:10]}")
        print(f"predictions written to {self.path}")
