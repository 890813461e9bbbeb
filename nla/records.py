"""What an evaluation measured and what a run achieved, as typed records shared by the callbacks,
``nla experiment`` and ``nla compare`` (and written to ``summary.json`` and ``metrics.json``).

Accuracies come from one confusion matrix (rows: true class, columns: predicted class): overall
accuracy is its trace over its sum, per-class accuracy its diagonal over each row, and mean accuracy
the average of the per-class accuracies of the classes that have images. A class with no image in the
evaluated split has no accuracy (``None``), not 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """One evaluation pass over a split: overall, mean and per-class accuracy, and what they were computed on.

    ``excluded`` counts the images of classes that the model does not have (for example contempt, for a
    7-class model tested on 8-class FER+); they are not part of any metric.
    """

    acc: float
    mean_acc: float
    class_acc: dict[str, Optional[float]]
    support: dict[str, int]
    confusion: list[list[int]]
    num_samples: int
    epoch: Optional[int] = None
    excluded: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_confusion(
        cls,
        matrix: Any,
        class_names: Sequence[str],
        epoch: Optional[int] = None,
        excluded: Optional[dict[str, int]] = None,
    ) -> Evaluation:
        counts = np.asarray(matrix, dtype=np.int64)
        if counts.shape != (len(class_names), len(class_names)):
            raise ValueError(f"a {counts.shape} confusion matrix for {len(class_names)} classes")
        support = counts.sum(axis=1)
        total = int(support.sum())
        class_acc = {
            name: (float(counts[k, k] / support[k]) if support[k] else None) for k, name in enumerate(class_names)
        }
        present = [value for value in class_acc.values() if value is not None]
        return cls(
            acc=float(np.trace(counts) / total) if total else math.nan,
            mean_acc=math.fsum(present) / len(present) if present else math.nan,
            class_acc=class_acc,
            support={name: int(n) for name, n in zip(class_names, support)},
            confusion=counts.tolist(),
            num_samples=total,
            epoch=epoch,
            excluded=dict(excluded or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    def line(self) -> str:
        """``acc 71.2%  mean 58.1%``."""
        return f"acc {100 * self.acc:.1f}%  mean {100 * self.mean_acc:.1f}%"


def mean_of(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean of the values that are there; ``None`` when none is."""
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


@dataclass(frozen=True)
class Aggregate:
    """Accuracies averaged over several epochs (the mean of the last k)."""

    epochs: list[int]
    acc: float
    mean_acc: float
    class_acc: dict[str, Optional[float]]

    @classmethod
    def of(cls, records: Sequence[Evaluation]) -> Aggregate:
        names = list(records[-1].class_acc)
        return cls(
            epochs=[r.epoch if r.epoch is not None else -1 for r in records],
            acc=math.fsum(r.acc for r in records) / len(records),
            mean_acc=math.fsum(r.mean_acc for r in records) / len(records),
            class_acc={name: mean_of([r.class_acc.get(name) for r in records]) for name in names},
        )


@dataclass(frozen=True)
class NoiseRecord:
    """What a training epoch did with the labels that a noise protocol flipped, measured on the training step's own
    outputs (each image's augmented view, the model of that step): the share of flipped images predicted as their
    given, wrong label (``memorised``) and as their true label (``corrected``), the share of the other images
    predicted as their label (``clean_fit``), and how well two scores detect a flipped label, as the AUROC of a low
    score: NAW's weight (the weight NAW gives, or would give in a run without it) and the model's probability of the
    given label (the small-loss signal of the noisy-label literature). ``None`` where a score could not be ranked."""

    epoch: int
    images: int
    flipped: int
    memorised: float
    corrected: float
    clean_fit: float
    auroc_naw_weight: Optional[float]
    auroc_p_given: Optional[float]
    weight_flipped: float
    weight_clean: float

    #: The figures a table or a curve shows, in that order.
    SHOWN = ("memorised", "corrected", "auroc_naw_weight", "auroc_p_given")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def logged(self) -> dict[str, float]:
        """The figures by the names the loggers show (``noise/memorised``, ...), those that could be measured."""
        names = (*self.SHOWN, "clean_fit", "weight_flipped", "weight_clean")
        return {f"noise/{name}": value for name in names if (value := getattr(self, name)) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseRecord:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An error of the file system while ``path`` is written names it (a full disk's names none)."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a kill while writing leaves the old file (or none), never
    half of one that a later reader would take for finished; two processes writing it at once each write a partial
    file of their own."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with writing(path):
        try:
            partial.write_text(text)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


@dataclass
class RunSummary:
    """A fit's validation history and the three numbers FER papers report from it: the last epoch, the
    best epoch and the mean of the last ``last_k`` epochs. Written as ``summary.json``.

    ``validation`` records what was validated on: the split, its number of images and any batch limits;
    ``environment`` what the numbers came from: the versions, the device and the threads of the process that
    wrote the summary (:func:`nla.callbacks.environment`), so that two runs that differ can be told apart; ``start``
    what the backbone's weights started from (:class:`nla.backbones.starts.Start`, with the backbone's name),
    ``input`` the image size and normalisation it was trained with, and ``label_noise`` what each training epoch did
    with the flipped labels (:class:`NoiseRecord`; empty where the protocol flipped none). ``finished`` is false for
    the summary of a fit that was stopped (Ctrl-C, SIGTERM, an error) before its last epoch: the epochs it has.
    """

    epochs: list[Evaluation] = field(default_factory=list)
    last_k: int = 5
    validation: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    start: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    label_noise: list[NoiseRecord] = field(default_factory=list)
    finished: bool = True

    FILENAME = "summary.json"

    def add(self, record: Evaluation) -> None:
        """Record an epoch, replacing an earlier record of the same epoch (a resumed run re-validates it)."""
        self.epochs = [r for r in self.epochs if r.epoch != record.epoch] + [record]

    @property
    def last(self) -> Evaluation:
        return self.epochs[-1]

    @property
    def best(self) -> Evaluation:
        """The epoch of the highest overall accuracy (the earliest of ties)."""
        return max(self.epochs, key=lambda r: r.acc)

    @property
    def best_by_mean_acc(self) -> Evaluation:
        return max(self.epochs, key=lambda r: r.mean_acc)

    @property
    def mean_last(self) -> Aggregate:
        return Aggregate.of(self.epochs[-self.last_k :])

    def noise_over(self, epochs: Sequence[Optional[int]]) -> dict[str, Optional[float]]:
        """The label-noise figures (:attr:`NoiseRecord.SHOWN`) of these epochs, averaged; empty where none of them
        has a record."""
        chosen = [r for r in self.label_noise if r.epoch in set(epochs)]
        if not chosen:
            return {}
        return {name: mean_of([getattr(r, name) for r in chosen]) for name in NoiseRecord.SHOWN}

    def to_dict(self) -> dict[str, Any]:
        records = {
            "finished": self.finished,
            "validation": self.validation,
            "start": self.start,
            "input": self.input,
            "environment": self.environment,
        }
        noise = {"label_noise": [r.to_dict() for r in self.label_noise]} if self.label_noise else {}
        if not self.epochs:
            return {"epochs": [], "last_k": self.last_k, **records, **noise}
        return {
            "last": self.last.to_dict(),
            "best": self.best.to_dict(),
            "best_by_mean_acc": self.best_by_mean_acc.to_dict(),
            "mean_last": {"k": self.last_k, **asdict(self.mean_last)},
            "last_k": self.last_k,
            **records,
            "epochs": [r.to_dict() for r in self.epochs],
            **noise,
        }

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        return cls(
            [Evaluation.from_dict(r) for r in data.get("epochs", [])],
            int(data.get("last_k", 5)),
            dict(data.get("validation", {})),
            dict(data.get("environment", {})),
            dict(data.get("start", {})),
            dict(data.get("input", {})),
            [NoiseRecord.from_dict(r) for r in data.get("label_noise", [])],
            bool(data.get("finished", True)),
        )

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        """The summary in ``path`` (a ``summary.json`` or the run directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / cls.FILENAME
        try:
            data = json.loads(path.read_text())
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a run summary (not text)") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        try:
            return cls.from_dict(data)
        except (AttributeError, TypeError, KeyError, ValueError, IndexError) as error:
            raise ValueError(f"{path}: not a summary nla fit wrote ({type(error).__name__}: {error})") from None
