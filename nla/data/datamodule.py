"""Batching: LightningDataModules for RAF-DB, FER+, AffectNet, image folders and CSV lists.

:class:`FERDataModule` does the work for all of them: it reads each split through the source's
reader, applies the label protocols to the training split, checks every input before the first
step, and serves batches through one of two pixel pipelines:

- ``"cached"``: decode every image once into a uint8 cache, gather batches from it, and augment
  whole batches on the accelerator (the default on a GPU);
- ``"albumentations"``: decode and augment each sample in DataLoader workers (for custom
  augmentations and datasets too big to cache).

Subclasses only say how a split is read and what the classes are.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler

from nla.data.batch_augment import ReusableBuffer, batch_eval_transform, batch_train_augment
from nla.data.cache import build_image_cache
from nla.data.datasets import CachedImageDataset, FERImageDataset, PredictImageDataset
from nla.data.images import find_unreadable, list_images, load_image
from nla.data.protocols import add_label_noise, apply_label_file, long_tail_indices, measured_flip_rate, write_label_file
from nla.data.samples import DataError, Samples, check_classes_present, check_files_exist
from nla.data.sources import affectnet, ferplus, generic, rafdb
from nla.data.transforms import RAFDB_MEAN, RAFDB_STD, Augmentation, eval_transform, train_transform

log = logging.getLogger(__name__)

Split = Literal["train", "valid", "test"]
Pipeline = Literal["auto", "cached", "albumentations"]


class FERDataModule(LightningDataModule):
    """Aligned face crops for facial expression recognition, with the NLA training recipe.

    Args:
        root: The dataset folder (see each subclass for its layout); ``--data.root`` on the command line.
        batch_size: Training and evaluation batch size (the paper: 32).
        num_workers: DataLoader workers for the albumentations pipeline and for decoding the cache.
        image_size: Side of the square network input (the paper: 224).
        mean: Per-channel mean for normalising, as a share of 255.
        std: Per-channel std for normalising, as a share of 255.
        augmentation: The training augmentation's settings.
        pipeline: ``"cached"`` (decode once, augment batches on the device), ``"albumentations"``
            (per sample in workers) or ``"auto"`` (cached when training on a GPU and the cache fits
            ``max_cache_gb``).
        cache_dir: Keep the decoded cache in files here, to reuse across runs; ``None`` keeps it in memory.
        cache_resolution: Resize images to this side when caching; ``None`` keeps the native
            resolution, which must then be the same for every image.
        max_cache_gb: ``"auto"`` uses the cache only below this size.
        noise_rate: Share of training labels made noisy. Where the dataset ships a standard noisy-label
            file for this rate (RAF-DB: 0.1, 0.2, 0.3) and ``noise_source`` is ``"standard_file"``, that
            file is used; otherwise exactly ``round(noise_rate * N)`` labels are flipped with ``noise_seed``.
        noise_seed: Seed of the symmetric noise generator.
        noise_source: ``"standard_file"`` or ``"generate"`` (always use the seeded generator).
        train_label_file: A ``<name> <label>`` file (the dataset's own label codes) giving the training
            labels, and the training images when it lists fewer: a noisy-label file or a saved subset.
        imbalance_factor: Subsample the training split to a long tail whose largest class is this many
            times its smallest (selected on the shipped labels); ``None`` keeps every image.
        long_tail_seed: Seed of the long-tail draw.
        long_tail_class_order: Class names from largest to smallest; ``None`` orders by natural frequency.
        balanced_sampler: Draw training batches with probability inversely proportional to class size.
        check_images: Before training, ``"decode"`` every image (always so for the cached pipeline) or
            only check that each ``"exists"``.
        skip_unreadable: Drop images that cannot be decoded, and report them, instead of stopping.
        val_split: The split validated on while fitting. FER papers validate on the test split.
        predict_root: A folder of images (nested, any common format) for ``nla predict``.
        drop_last: Drop the last incomplete training batch.
        save_train_labels: When a label protocol is active, write the training labels actually used to
            ``<default_root_dir>/train_labels.txt``, which ``train_label_file`` can load again.
    """

    #: How label files write class index 0 (RAF-DB writes labels 1..7).
    label_code_offset = 0

    def __init__(
        self,
        root: Optional[str] = None,
        batch_size: int = 32,
        num_workers: int = 4,
        image_size: int = 224,
        mean: tuple[float, float, float] = RAFDB_MEAN,
        std: tuple[float, float, float] = RAFDB_STD,
        augmentation: Augmentation = Augmentation(),
        pipeline: Pipeline = "auto",
        cache_dir: Optional[str] = None,
        cache_resolution: Optional[int] = None,
        max_cache_gb: float = 16.0,
        noise_rate: float = 0.0,
        noise_seed: int = 0,
        noise_source: Literal["standard_file", "generate"] = "standard_file",
        train_label_file: Optional[str] = None,
        imbalance_factor: Optional[float] = None,
        long_tail_seed: int = 0,
        long_tail_class_order: Optional[list[str]] = None,
        balanced_sampler: bool = False,
        check_images: Literal["decode", "exists"] = "decode",
        skip_unreadable: bool = False,
        val_split: Split = "test",
        predict_root: Optional[str] = None,
        drop_last: bool = False,
        save_train_labels: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # checkpoints then carry the preprocessing (image size, mean, std)
        if not 0.0 <= noise_rate < 1.0:
            raise DataError(f"noise_rate {noise_rate} is outside [0, 1); give the share of training labels to flip, e.g. 0.3")
        if imbalance_factor is not None and imbalance_factor < 1:
            raise DataError(f"imbalance_factor {imbalance_factor} is below 1; it is the largest class count over the smallest")
        if batch_size < 1 or image_size < 8:
            raise DataError(f"need batch_size >= 1 and image_size >= 8, got {batch_size} and {image_size}")
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augmentation = augmentation
        self.pipeline = pipeline
        self.cache_dir = cache_dir
        self.cache_resolution = cache_resolution
        self.max_cache_gb = max_cache_gb
        self.noise_rate = noise_rate
        self.noise_seed = noise_seed
        self.noise_source = noise_source
        self.train_label_file = train_label_file
        self.imbalance_factor = imbalance_factor
        self.long_tail_seed = long_tail_seed
        self.long_tail_class_order = long_tail_class_order
        self.balanced_sampler = balanced_sampler
        self.check_images = check_images
        self.skip_unreadable = skip_unreadable
        self.val_split = val_split
        self.predict_root = predict_root
        self.drop_last = drop_last
        self.save_train_labels = save_train_labels
        self.splits: dict[str, Samples] = {}
        self.caches: dict[str, np.ndarray] = {}
        self.skipped: dict[str, list[str]] = {}
        self.protocol_notes: list[str] = []
        self._use_cache: Optional[bool] = None
        self._train_views = ReusableBuffer()

    # --- what a subclass provides ---------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    def read_split(self, split: Split) -> Samples:
        """The images and shipped labels of ``split``."""
        raise NotImplementedError

    def standard_noise_file(self, rate: float) -> Optional[Path]:
        """A noisy-label file the dataset ships for ``rate``, if any."""
        return None

    def require_root(self) -> str:
        if not self.root:
            raise DataError(f"{type(self).__name__} needs the dataset folder: pass --data.root /path/to/the/dataset")
        return self.root

    # --- derived ------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_class_counts(self) -> list[int]:
        """Class counts of the training labels actually used (after noise and long tail)."""
        return self.splits["train"].class_counts().tolist()

    @property
    def flipped(self) -> Optional[np.ndarray]:
        """Which training labels differ from the shipped ones (the noise mask), by training index."""
        return self.splits["train"].flipped if "train" in self.splits else None

    # --- setup: read, apply protocols, check --------------------------------------------------

    def setup(self, stage: Optional[str] = None) -> None:
        for split in self._splits_for(stage):
            if split not in self.splits:
                self._load_split(split)

    def _splits_for(self, stage: Optional[str]) -> list[str]:
        if stage in ("fit", None):
            return ["train", self.val_split] + (["test"] if stage is None and self.val_split != "test" else [])
        if stage == "validate":
            return [self.val_split]
        if stage == "test":
            return ["test"]
        return []

    def _load_split(self, split: str) -> None:
        samples = self.read_split(split)
        if list(samples.classes) != list(self.class_names):
            raise DataError(f"the {split} split has classes {list(samples.classes)}, expected {self.class_names}")
        if split == "train":
            samples = self._apply_protocols(samples)
            check_classes_present(samples, split)
        if not len(samples):
            raise DataError(f"the {split} split of {self.root!r} has no images")
        samples = self._check_images(samples, split)
        self.splits[split] = samples
        counts = dict(zip(self.class_names, samples.class_counts().tolist()))
        rank_zero_info(f"{type(self).__name__} {split}: {len(samples)} images {counts}")

    def _apply_protocols(self, samples: Samples) -> Samples:
        notes = []
        if self.train_label_file:
            samples = apply_label_file(samples, self._resolve(self.train_label_file), self.label_code_offset)
            notes.append(f"labels from {self.train_label_file}")
        standard = None
        if self.noise_rate > 0 and self.noise_source == "standard_file":
            standard = self.standard_noise_file(self.noise_rate)
        if standard is not None:  # shipped files name every training image, so apply before subsampling
            samples = apply_label_file(samples, standard, self.label_code_offset)
            notes.append(f"noise {self.noise_rate:.0%} from {standard}, measured flip rate {measured_flip_rate(samples):.2%}")
        if self.imbalance_factor is not None:
            order = None
            if self.long_tail_class_order:
                unknown = [c for c in self.long_tail_class_order if c not in self.class_names]
                if unknown:
                    raise DataError(f"long_tail_class_order names {unknown}, which are not among the classes {self.class_names}")
                order = [self.class_names.index(c) for c in self.long_tail_class_order]
            keep = long_tail_indices(samples.clean_labels, self.imbalance_factor, self.long_tail_seed, order)
            samples = samples.subset(keep)
            notes.append(f"long tail, imbalance factor {self.imbalance_factor:g}: {len(samples)} images kept")
        if self.noise_rate > 0 and standard is None:
            noisy, _ = add_label_noise(samples.labels, self.noise_rate, self.num_classes, self.noise_seed)
            samples = samples.relabelled(noisy)
            notes.append(f"noise {self.noise_rate:.0%} generated with seed {self.noise_seed}: {int(samples.flipped.sum())} labels flipped")
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
            return  # a resumed run: the protocol is seeded, and what was written is never overwritten
        write_label_file(path, samples.names, samples.labels, self.label_code_offset)

    def _resolve(self, path: str) -> Path:
        """Relative protocol files are looked up in the working directory, then under the data root."""
        candidate = Path(path)
        if candidate.is_absolute() or candidate.exists() or not self.root:
            return candidate
        return Path(self.root) / candidate

    def _check_images(self, samples: Samples, split: str) -> Samples:
        if not self.skip_unreadable:  # when skipping, a missing file is one more unreadable image
            check_files_exist(samples, split)
        if self._cache_enabled(samples):
            cache, failures = build_image_cache(
                samples.paths, samples.boxes, self.cache_resolution, self.cache_dir, max(self.num_workers, 1)
            )
        elif self.check_images == "decode" or self.skip_unreadable:
            cache, failures = None, find_unreadable(samples.paths, samples.boxes, max(self.num_workers, 1))
        else:
            cache, failures = None, []
        if failures and not self.skip_unreadable:
            index, reason = failures[0]
            more = f" ({len(failures) - 1} more unreadable images; set skip_unreadable: true to drop them)" if len(failures) > 1 else ""
            raise DataError(f"{samples.origins[index]}: {reason}{more}")
        if failures:
            bad = {index for index, _ in failures}
            self.skipped[split] = [samples.paths[i] for i in sorted(bad)]
            shown = ", ".join(self.skipped[split][:20]) + (" ..." if len(bad) > 20 else "")
            rank_zero_warn(f"skipped {len(bad)} unreadable {split} image(s) of {len(samples)}: {shown}")
            samples = samples.subset([i for i in range(len(samples)) if i not in bad])
            if split == "train":
                check_classes_present(samples, split)
            if cache is not None:
                cache, failures = build_image_cache(
                    samples.paths, samples.boxes, self.cache_resolution, self.cache_dir, max(self.num_workers, 1)
                )
        if cache is not None:
            self.caches[split] = cache
        return samples

    def _cache_enabled(self, samples: Samples) -> bool:
        """Decided once, on the first split loaded (the training split when fitting), for every split."""
        if self._use_cache is None:
            if self.pipeline != "auto":
                self._use_cache = self.pipeline == "cached"
            else:
                on_gpu = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
                self._use_cache = on_gpu and self._estimated_cache_gb(samples) <= self.max_cache_gb
            rank_zero_info(f"{type(self).__name__}: {'cached' if self._use_cache else 'albumentations'} pixel pipeline")
        return self._use_cache

    def _estimated_cache_gb(self, samples: Samples) -> float:
        side = self.cache_resolution
        if side is None:
            first = load_image(samples.paths[0], None if samples.boxes is None else samples.boxes[0])
            pixels = first.shape[0] * first.shape[1]
        else:
            pixels = side * side
        return len(samples) * pixels * 3 / 1e9

    # --- batches ------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        samples = self.splits["train"]
        sampler = self._train_sampler(samples)
        if "train" in self.caches:
            return self._cached_loader(samples, self.caches["train"], sampler, self.drop_last)
        dataset = FERImageDataset(samples, train_transform(self.augmentation, self.image_size, self.mean, self.std), two_views=True)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0, drop_last=self.drop_last,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_root:
            raise DataError("nla predict needs a folder of images: pass --data.predict_root <folder>")
        paths = list_images(self.predict_root)
        if not paths:
            raise DataError(f"prediction folder {self.predict_root!r} holds no image files")
        dataset = PredictImageDataset(paths, eval_transform(self.image_size, self.mean, self.std), self.image_size)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def _train_sampler(self, samples: Samples):
        if not self.balanced_sampler:
            return RandomSampler(samples.labels)
        counts = np.bincount(samples.labels, minlength=self.num_classes).astype(np.float64)
        weights = 1.0 / counts[samples.labels]
        return WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(samples), replacement=True)

    def _eval_loader(self, split: str) -> DataLoader:
        samples = self.splits[split]
        sampler = self._eval_sampler(samples)
        if split in self.caches:
            return self._cached_loader(samples, self.caches[split], sampler, False)
        dataset = FERImageDataset(samples, eval_transform(self.image_size, self.mean, self.std))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    def _eval_sampler(self, samples: Samples):
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # No padding with repeated images, so metrics synced over processes equal one process's.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            return UnrepeatedDistributedSampler(samples.labels, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
        return SequentialSampler(samples.labels)

    def _cached_loader(self, samples: Samples, cache: np.ndarray, sampler, drop_last: bool) -> DataLoader:
        # Batches of uint8 images gathered from the cache in the main process; augmented once on the device.
        dataset = CachedImageDataset(samples, cache)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          collate_fn=dataset.collate, num_workers=0, pin_memory=torch.cuda.is_available())

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or batch["image"].dtype != torch.uint8:
            return batch
        trainer = self.trainer
        if trainer is not None and trainer.state.stage == RunningStage.TRAINING:
            views = self.augment_train(batch["image"])
            n = len(views) // 2
            batch["views"], batch["image"], batch["image_mirror"] = views, views[:n], views[n:]
        else:
            batch["image"] = batch_eval_transform(batch["image"], self.image_size, self.mean, self.std)
        return batch

    def augment_train(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 N x H x W x C batch from the cache to the model's 2N training input: the augmented views,
        then their mirrors. On the CPU it is written into a buffer reused once the last batch is released."""
        n, _, _, channels = images.shape
        out = None
        if images.device.type == "cpu":
            out = self._train_views.get((2 * n, channels, self.image_size, self.image_size), images.device)
        return batch_train_augment(images, self.augmentation, self.image_size, self.mean, self.std, out=out)

    def state_dict(self) -> dict[str, Any]:
        return {"protocol_notes": self.protocol_notes, "class_names": self.class_names}


class RAFDBDataModule(FERDataModule):
    """RAF-DB basic, in the layout RAF-DB ships (``basic/EmoLabel``, ``basic/Image/aligned``) or the re-upload's
    ``DATASET/{train,test}/<label>/`` with ``{train,test}_labels.csv``; ``layout="auto"`` detects which.

    Classes, labels 1..7: Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral. RAF-DB has no
    validation split, so the paper's protocol validates on the test split.

    Args:
        layout: ``"auto"``, ``"basic"`` or ``"folders"``.
    """

    label_code_offset = rafdb.LABEL_CODE_OFFSET

    def __init__(self, root: Optional[str] = None, layout: rafdb.Layout = "auto", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.layout = layout

    @property
    def class_names(self) -> list[str]:
        return list(rafdb.CLASSES)

    def read_split(self, split: Split) -> Samples:
        if split == "valid":
            raise DataError("RAF-DB has no validation split; set the data's val_split to 'test' (the paper's protocol)")
        return rafdb.read_rafdb(self.require_root(), split, self.layout)

    def standard_noise_file(self, rate: float) -> Optional[Path]:
        level = round(rate * 10)
        if not math.isclose(rate, level / 10) or level not in (1, 2, 3):
            return None
        _, base = rafdb.find_layout(self.require_root(), self.layout)
        for folder in (base / "EmoLabel", Path(self.root) / "basic" / "EmoLabel", base.parent / "basic" / "EmoLabel"):
            if (folder / f"noise0{level}.txt").is_file():
                return folder / f"noise0{level}.txt"
        return None


class FERPlusDataModule(FERDataModule):
    """FER+ (``FER2013Train``/``Valid``/``Test``) with majority-vote labels from ``fer2013new.csv``, else ``label.csv``.

    Classes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt (8), or the first 7.

    Args:
        num_classes: 8, or 7 with contempt dropped.
        label_source: ``"auto"`` (``fer2013new.csv`` when present), ``"fer2013new"`` or ``"label_csv"``.
    """

    def __init__(
        self, root: Optional[str] = None, num_classes: Literal[7, 8] = 8, label_source: ferplus.LabelSource = "auto",
        val_split: Split = "valid", **kwargs: Any,
    ) -> None:
        super().__init__(root, val_split=val_split, **kwargs)
        self._classes = ferplus.classes_for(num_classes)
        self._num_classes = num_classes
        self.label_source = label_source

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    def read_split(self, split: Split) -> Samples:
        return ferplus.read_ferplus(self.require_root(), split, self._num_classes, self.label_source)


class AffectNetDataModule(FERDataModule):
    """AffectNet from ``training.csv`` and ``validation.csv``; the validation set is the test set.

    Classes, codes 0..7: Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt; codes 8-10 are dropped.

    Args:
        num_classes: 7, or 8 with contempt.
        crop_face: Crop each image to its face box from the CSV.
    """

    def __init__(self, root: Optional[str] = None, num_classes: Literal[7, 8] = 7, crop_face: bool = False, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._classes = affectnet.classes_for(num_classes)
        self._num_classes = num_classes
        self.crop_face = crop_face

    @property
    def class_names(self) -> list[str]:
        return list(self._classes)

    def read_split(self, split: Split) -> Samples:
        samples = affectnet.read_affectnet(self.require_root(), split, self._num_classes)
        if not self.crop_face:
            samples.boxes = None
        return samples


class ImageFolderDataModule(FERDataModule):
    """``root/<split>/<class>/<image>`` with splits ``train``, ``val`` (or ``valid``) and ``test``.

    Args:
        class_names: The classes in label order; ``None`` takes the sorted folder names of ``train/``.
    """

    def __init__(self, root: Optional[str] = None, class_names: Optional[list[str]] = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._class_names = list(class_names) if class_names else None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = list(generic.folder_classes(self.require_root()))
        return self._class_names

    def read_split(self, split: Split) -> Samples:
        return generic.read_image_folder(self.require_root(), split, self.class_names)


class CSVDataModule(FERDataModule):
    """Lists of ``path,label`` in CSV files, one per split; paths are relative to ``root``.

    Args:
        class_names: The classes in label order; labels may be these names or their indices.
        train_csv: Training list. val_csv: Validation list (``None``: validate on ``test_csv``). test_csv: Test list.
    """

    def __init__(
        self, class_names: list[str], train_csv: str, test_csv: str, root: Optional[str] = None, val_csv: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("val_split", "valid" if val_csv else "test")
        super().__init__(root, **kwargs)
        self._class_names = list(class_names)
        self.csv_files = {"train": train_csv, "valid": val_csv, "test": test_csv}

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    def read_split(self, split: Split) -> Samples:
        path = self.csv_files[split]
        if path is None:
            raise DataError(f"no CSV list for the {split} split; set the data's {split if split != 'valid' else 'val'}_csv")
        return generic.read_csv_list(self._resolve(path), self.class_names, self.root)
