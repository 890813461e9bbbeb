"""How a DataModule's split becomes samples ready to batch: read by the dataset's source, held out, changed by the
label protocols, its faces found (photos), its images checked and cached.

:class:`SplitPreparation` does this for :class:`nla.data.base.FERDataModule`, which owns one; it reads the dataset
through the narrow :class:`SplitSource` (which each dataset's DataModule is) and the settings groups it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nla.data.cache import CacheSettings, estimated_cache_gb
from nla.data.checks import ImageCheck, check_split
from nla.data.prediction import find_faces
from nla.data.protocols import LabelProtocol
from nla.data.samples import DataError, Samples, check_classes_present
from nla.data.splits import HoldOut

Split = Literal["train", "valid", "test"]
PipelineMode = Literal["auto", "cached", "albumentations"]

#: The share of each class held out for validation where a dataset ships no splits and none is asked for.
DEFAULT_HOLDOUT = 0.2


class SplitSource(Protocol):
    """What a dataset gives the preparation: its folder, classes, label codes and how a split is read."""

    root: Optional[str]
    label_code_offset: int

    @property
    def class_names(self) -> list[str]: ...
    def read_split(self, split: Split) -> Samples: ...
    def has_split(self, split: Split) -> bool: ...
    def standard_noise_file(self, rate: float) -> Optional[Path]: ...


@dataclass(frozen=True)
class ImageChecks:
    """``check``: before training, ``decode`` every image (always so for the cached pipeline) or only check that
    each ``exists``; ``skip_unreadable``: drop images that cannot be read, and report them, instead of stopping."""

    check: ImageCheck = "decode"
    skip_unreadable: bool = False


class SplitPreparation:
    """Reading, holding out, relabelling, checking and caching the splits a stage needs.

    Args:
        source: The dataset (its DataModule).
        protocol: What happens to the training labels.
        holdout: What part of the training split is held out for validation.
        checks: How images are checked before training.
        pipeline: ``cached``, ``albumentations`` or ``auto``, and ``cache``, the cache's settings.
        who: The name that log lines start with.
    """

    def __init__(
        self,
        source: SplitSource,
        protocol: LabelProtocol,
        holdout: HoldOut,
        checks: ImageChecks,
        pipeline: PipelineMode,
        cache: CacheSettings,
        who: str,
    ) -> None:
        self.source, self.protocol, self.holdout, self.checks = source, protocol, holdout, checks
        self.pipeline, self.cache, self.who = pipeline, cache, who
        self.splits: dict[str, Samples] = {}
        self.caches: dict[str, np.ndarray] = {}
        self.skipped: dict[str, list[str]] = {}
        self.protocol_notes: list[str] = []
        self._labelled: dict[str, Samples] = {}  # read by prepare_data, checked and cached by setup
        self._use_cache: Optional[bool] = None

    # --- which splits ---------------------------------------------------------------------------

    def effective_holdout(self, stage: Optional[str]) -> Optional[HoldOut]:
        """The hold-out asked for; for a fit on a dataset that ships no splits, 20% of each class by default."""
        if self.holdout.active:
            return self.holdout
        if stage in ("fit", None) and not self.source.has_split("test"):
            return dataclasses.replace(self.holdout, val_fraction=DEFAULT_HOLDOUT)  # its group_pattern and seed
        if self.holdout.group_pattern is not None and self.source.has_split("test"):  # it groups a hold-out; none here
            raise DataError(
                f"--data.holdout.group_pattern {self.holdout.group_pattern!r} keeps images together in a hold-out, "
                "and this data has a split of its own: give --data.holdout.val_fraction or num_folds too, or leave it"
            )
        return None

    def val_split(self, asked: Split, stage: Optional[str]) -> Split:
        """What a fit validates on: the held-out part when there is one, else ``asked``."""
        return "valid" if self.effective_holdout(stage) is not None else asked

    def splits_for(self, stage: Optional[str], val_split: Split) -> list[Split]:
        if stage in ("fit", None):
            return ["train", val_split] + (["test"] if stage is None and val_split != "test" else [])
        if stage == "validate":
            return [val_split]
        if stage == "test":
            return ["test"]
        return []

    # --- labels: read, held out, protocols ------------------------------------------------------

    def read(self, split: str, holdout: Optional[HoldOut]) -> Samples:
        if holdout is None or (split == "test" and self.source.has_split("test")):
            return self.source.read_split(split)  # type: ignore[arg-type]
        full = self.source.read_split("train")
        train, held_out = holdout.split(full)
        if split == "train":
            if not self.holdout.active:
                rank_zero_info(
                    f"{self.source.root} has no train/ and test/ folders: holding out {DEFAULT_HOLDOUT:.0%} of each "
                    "class for validation (set --data.holdout.val_fraction or --data.holdout.num_folds to choose)"
                )
            rank_zero_info(
                f"{self.who}: {len(held_out)} of {len(full)} images held out for validation ({holdout.describe()})"
            )
        return full.subset(train if split == "train" else held_out)

    def label(
        self,
        split: str,
        stage: Optional[str],
        write_train_labels: Optional[Callable[[Samples], None]] = None,
        min_batch: int = 0,
    ) -> Samples:
        """A split's images and the labels it trains or is evaluated with; no image is opened. The training
        split's protocol labels go to ``write_train_labels``; with ``min_batch``, fewer training images than that
        is an error (no batch would train)."""
        if split in self.splits:
            return self.splits[split]
        if split in self._labelled:
            return self._labelled[split]
        samples = self.read(split, self.effective_holdout(stage))
        classes = list(self.source.class_names)
        if list(samples.classes) != classes:
            raise DataError(f"the {split} split has classes {list(samples.classes)}, expected {classes}")
        for note in samples.notes:
            rank_zero_info(f"{self.who} {split}: {note}")
        if split == "train":
            samples, self.protocol_notes = self.protocol.apply(
                samples, self.source.standard_noise_file, self.source.label_code_offset, self.resolve
            )
            for note in self.protocol_notes:
                rank_zero_info(f"{self.who} train: {note}")
            check_classes_present(samples, split)
            if len(samples) < min_batch:
                raise DataError(
                    f"the train split has {len(samples)} images, fewer than --data.batch_size {min_batch}: with "
                    "--data.drop_last true not one batch would train; lower the batch size"
                )
            if self.protocol_notes and write_train_labels is not None:  # labels that passed their checks
                write_train_labels(samples)
        self._labelled[split] = samples
        return samples

    def resolve(self, path: str) -> Path:
        """Relative protocol files are looked up in the working directory, then under the data root; one in
        neither place stops the run in a line that names the path as given and both places."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists() or not self.source.root:
            return candidate
        under_root = Path(self.source.root) / candidate
        if not under_root.exists():
            raise DataError(
                f"{path!r} does not exist: neither in the working directory ({Path.cwd()}) nor under --data.root "
                f"{self.source.root!r}"
            )
        return under_root

    # --- pixels: faces, checks, cache -----------------------------------------------------------

    def load(self, split: str, samples: Samples, image_size: int, detector: Any, workers: int, trainer: Any) -> None:
        """Check (and cache) the images of a split :meth:`label` gave; from then on it is in :attr:`splits`."""
        if split in self.splits:
            return
        self._labelled.pop(split, None)
        if split != "train" and detector is not None and samples.boxes is None:
            samples = find_faces(samples, detector, workers, split, self.who, self.checks.skip_unreadable)
        if not len(samples):
            raise DataError(f"the {split} split of {self.source.root!r} has no images")
        checked = check_split(
            samples,
            split,
            self.checks.check,
            self.checks.skip_unreadable,
            self.cache_enabled(samples, trainer),
            self.cache.resolution,
            image_size,
            self.cache.dir,
            max(workers, 1),
        )
        if checked.skipped:
            self.skipped[split] = checked.skipped
            shown = ", ".join(checked.skipped[:20]) + (" ..." if len(checked.skipped) > 20 else "")
            rank_zero_warn(f"skipped {len(checked.skipped)} unreadable {split} image(s) of {len(samples)}: {shown}")
        if checked.cache is not None:
            self.caches[split] = checked.cache
        self.splits[split] = checked.samples
        counts = dict(zip(self.source.class_names, checked.samples.class_counts().tolist()))
        rank_zero_info(f"{self.who} {split}: {len(checked.samples)} images {counts}")

    def cache_enabled(self, samples: Samples, trainer: Any) -> bool:
        """Decided once, on the first split loaded (the training split when fitting), for every split."""
        if self._use_cache is None:
            if self.pipeline != "auto":
                self._use_cache = self.pipeline == "cached"
            else:
                on_accelerator = trainer is not None and trainer.strategy.root_device.type != "cpu"
                fits = estimated_cache_gb(samples, self.cache.resolution) <= self.cache.max_gb
                self._use_cache = on_accelerator and fits
            rank_zero_info(f"{self.who}: {'cached' if self._use_cache else 'albumentations'} pixel pipeline")
        return self._use_cache

    def decode_only(self) -> None:
        """Nothing is trained: decoding once is enough (no cache)."""
        if self._use_cache is None:
            self._use_cache = False
