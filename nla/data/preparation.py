"""How a DataModule's split becomes samples ready to batch: read by the dataset's source, held out, changed by the
label protocols, its faces found (photos), its images checked and cached, its normalisation measured.

:class:`SplitPreparation` is the part of :class:`nla.data.base.FERDataModule` that does this; it reads the settings
that ``FERDataModule.__init__`` stores and the hooks each dataset's DataModule provides (``read_split``,
``has_split``, ``standard_noise_file``, ``class_names``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nla.data.cache import estimated_cache_gb
from nla.data.checks import ImageCheck, check_split
from nla.data.photos import find_faces
from nla.data.protocols import LabelProtocol, write_label_file
from nla.data.samples import DataError, Samples, check_classes_present
from nla.data.splits import HoldOut
from nla.data.stats import measure_stats

Split = Literal["train", "valid", "test"]


class SplitPreparation:
    """Reading, holding out, relabelling, checking and caching the splits a stage needs (a mixin of
    :class:`nla.data.base.FERDataModule`, which sets these attributes)."""

    if TYPE_CHECKING:  # set by FERDataModule.__init__ and its hooks
        root: Optional[str]
        num_workers: int
        mean: Optional[tuple[float, ...]]
        std: Optional[tuple[float, ...]]
        pipeline: str
        cache_dir: Optional[str]
        cache_resolution: Optional[int]
        max_cache_gb: float
        protocol: LabelProtocol
        holdout: Optional[HoldOut]
        check_images: ImageCheck
        skip_unreadable: bool
        val_split: Split
        detector: Any
        drop_last: bool
        batch_size: int
        save_train_labels: bool
        splits: dict[str, Samples]
        _labelled: dict[str, Samples]
        caches: dict[str, np.ndarray]
        skipped: dict[str, list[str]]
        protocol_notes: list[str]
        _use_cache: Optional[bool]
        label_code_offset: int
        trainer: Any
        hparams: Any

        @property
        def class_names(self) -> list[str]: ...
        @property
        def image_size(self) -> int: ...
        def read_split(self, split: Split) -> Samples: ...
        def has_split(self, split: Split) -> bool: ...
        def standard_noise_file(self, rate: float) -> Optional[Path]: ...

    def _choose_splits(self, stage: Optional[str]) -> None:
        """Settle which splits a ``stage`` reads, before they are read (a folder without splits holds one out)."""

    def _splits_for(self, stage: Optional[str]) -> list[Split]:
        if stage in ("fit", None):
            return ["train", self.val_split] + (["test"] if stage is None and self.val_split != "test" else [])
        if stage == "validate":
            return [self.val_split]
        if stage == "test":
            return ["test"]
        return []

    def _read(self, split: str) -> Samples:
        if self.holdout is None or (split == "test" and self.has_split("test")):
            return self.read_split(split)  # type: ignore[arg-type]
        full = self.read_split("train")
        train, held_out = self.holdout.split(full)
        if split == "train":
            rank_zero_info(
                f"{type(self).__name__}: {len(held_out)} of {len(full)} images held out for validation "
                f"({self.holdout.describe()})"
            )
        return full.subset(train if split == "train" else held_out)

    def _label(self, split: str) -> Samples:
        """A split's images and the labels it trains or is evaluated with; no image is opened."""
        samples = self._read(split)
        if list(samples.classes) != list(self.class_names):
            raise DataError(f"the {split} split has classes {list(samples.classes)}, expected {self.class_names}")
        for note in samples.notes:
            rank_zero_info(f"{type(self).__name__} {split}: {note}")
        if split == "train":
            samples = self._apply_protocols(samples)
            check_classes_present(samples, split)
            if self.drop_last and len(samples) < self.batch_size:
                raise DataError(
                    f"the train split has {len(samples)} images, fewer than --data.batch_size {self.batch_size}: with "
                    "--data.drop_last true not one batch would train; lower the batch size"
                )
        return samples

    def _load_split(self, split: str) -> None:
        samples = self._labelled.pop(split, None)
        if samples is None:
            samples = self._label(split)
        if split != "train" and self.detector is not None and samples.boxes is None:
            samples = find_faces(samples, self.detector, self.num_workers, split, type(self).__name__)
        if not len(samples):
            raise DataError(f"the {split} split of {self.root!r} has no images")
        cached = self._cache_enabled(samples)
        checked = check_split(
            samples,
            split,
            self.check_images,
            self.skip_unreadable,
            cached,
            self.cache_resolution,
            self.image_size,
            self.cache_dir,
            max(self.num_workers, 1),
        )
        if checked.skipped:
            self.skipped[split] = checked.skipped
            shown = ", ".join(checked.skipped[:20]) + (" ..." if len(checked.skipped) > 20 else "")
            rank_zero_warn(f"skipped {len(checked.skipped)} unreadable {split} image(s) of {len(samples)}: {shown}")
        if checked.cache is not None:
            self.caches[split] = checked.cache
        self.splits[split] = checked.samples
        counts = dict(zip(self.class_names, checked.samples.class_counts().tolist()))
        rank_zero_info(f"{type(self).__name__} {split}: {len(checked.samples)} images {counts}")

    def _apply_protocols(self, samples: Samples) -> Samples:
        samples, notes = self.protocol.apply(samples, self.standard_noise_file, self.label_code_offset, self._resolve)
        self.protocol_notes = notes
        for note in notes:
            rank_zero_info(f"{type(self).__name__} train: {note}")
        if notes and self.save_train_labels:
            self._write_train_labels(samples)
        return samples

    def _write_train_labels(self, samples: Samples) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / "train_labels.txt"
        if path.exists():
            return  # a resumed run: the protocol is seeded and unchanged (the CLI refuses a changed one)
        write_label_file(path, samples.names, samples.labels, self.label_code_offset)

    def _resolve(self, path: str) -> Path:
        """Relative protocol files are looked up in the working directory, then under the data root."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists() or not self.root:
            return candidate
        return Path(self.root) / candidate

    def _measure_stats(self) -> None:
        train = self.splits["train"]
        self.mean, self.std = measure_stats(
            train, self.caches.get("train"), cache_dir=self.cache_dir, workers=max(self.num_workers, 1)
        )
        self.hparams.update(mean=self.mean, std=self.std)  # the checkpoint records what the model was trained with
        rank_zero_info(
            f"{type(self).__name__}: normalising with the training images' mean {self.mean} and std {self.std}"
        )

    def _cache_enabled(self, samples: Samples) -> bool:
        """Decided once, on the first split loaded (the training split when fitting), for every split."""
        if self._use_cache is None:
            if self.pipeline != "auto":
                self._use_cache = self.pipeline == "cached"
            else:
                on_accelerator = self.trainer is not None and self.trainer.strategy.root_device.type != "cpu"
                self._use_cache = (
                    on_accelerator and estimated_cache_gb(samples, self.cache_resolution) <= self.max_cache_gb
                )
            rank_zero_info(f"{type(self).__name__}: {'cached' if self._use_cache else 'albumentations'} pixel pipeline")
        return self._use_cache
