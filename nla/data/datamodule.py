"""LightningDataModules for RAF-DB, FER+, AffectNet, image folders and CSV lists.

:class:`FERDataModule` orchestrates the jobs that live in their own modules: it reads each split with
the dataset's source (:mod:`nla.data.sources`), holds out a validation split where the dataset has none
(:mod:`nla.data.splits`), applies the label protocols to the training split (:mod:`nla.data.protocols`),
checks every image and builds the cache before the first step (:mod:`nla.data.checks`), and serves
batches through one of the two pixel pipelines (:mod:`nla.data.pipelines`). Subclasses only say how a
split is read and what the classes are.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from nla.data import pipelines
from nla.data.batch_augment import batch_eval_transform, batch_train_augment
from nla.data.checks import ImageCheck, check_split
from nla.data.datasets import FERImageDataset, PredictImageDataset
from nla.data.images import list_images, load_image
from nla.data.protocols import LabelProtocol, NoiseSource, write_label_file
from nla.data.samples import DataError, Samples, check_classes_present, check_files_exist
from nla.data.sources import affectnet, ferplus, generic, rafdb
from nla.data.splits import HoldOut
from nla.data.stats import measure_stats
from nla.data.transforms import Augmentation, eval_transform, train_transform
from nla.errors import check_image_size
from nla.faces import FaceDetector

Split = Literal["train", "valid", "test"]
Pipeline = Literal["auto", "cached", "albumentations"]
RGB = tuple[float, float, float]


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which a cluster's allotment sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class FERDataModule(LightningDataModule):
    """Aligned face crops for facial expression recognition, with the NLA training recipe.

    Args:
        root: The dataset folder (see each subclass for its layout); ``--data.root`` on the command line.
        batch_size: Training and evaluation batch size (the paper: 32).
        num_workers: DataLoader workers for the albumentations pipeline and for decoding; ``None`` takes
            the CPU cores available to this process, at most 8.
        image_size: Side of the square network input (the paper: 224).
        mean: Per-channel mean for normalising, as a share of 255; ``None`` measures it on the training
            images (once; it is kept in a small cache file and in the checkpoint).
        std: Per-channel std for normalising, as a share of 255; ``None`` measures it with ``mean``.
        augmentation: The training augmentation's settings.
        pipeline: ``cached`` (decode once, augment whole batches on the device), ``albumentations`` (per
            sample in workers) or ``auto`` (cached when training on a GPU and the cache fits ``max_cache_gb``).
        cache_dir: Keep the decoded cache (and measured statistics) in files here, to reuse across runs.
        cache_resolution: Resize images to this side when caching; ``None`` keeps the native size when all
            images share it, and caches images of different sizes at ``image_size``.
        max_cache_gb: ``auto`` uses the cache only below this size.
        noise_rate: Share of training labels made noisy (see ``noise_source``).
        noise_seed: Seed of the symmetric noise generator.
        noise_source: ``auto`` uses the dataset's standard noisy-label file where it defines one for the rate
            (RAF-DB: 0.1, 0.2, 0.3, which must then be present) and the seeded generator elsewhere;
            ``standard_file`` requires the file; ``generate`` always flips exactly ``round(noise_rate * N)``.
        train_label_file: A ``<name> <label>`` file (the dataset's own label codes) giving the training
            labels, and the training images when it lists fewer: a noisy-label file or a saved subset.
        imbalance_factor: Subsample the training split to a long tail whose largest class is this many
            times its smallest (selected on the shipped labels); ``None`` keeps every image.
        long_tail_seed: Seed of the long-tail draw.
        long_tail_class_order: Class names from largest to smallest; ``None`` orders by natural frequency.
        val_fraction: Hold out this share of each class of the training split for validation (seeded,
            stratified); for datasets without a validation split, such as CK+.
        num_folds: Instead, split the training split into this many stratified folds and validate on ``fold``.
        fold: The held-out fold (0-based) with ``num_folds``.
        group_pattern: A regular expression over file names (e.g. ``'S(\\d+)_'`` for CK+ subjects): images
            whose names give the same match stay on the same side of the hold-out.
        split_seed: Seed of the hold-out.
        balanced_sampler: Draw training batches with probability inversely proportional to class size.
        check_images: Before training, ``decode`` every image (always so for the cached pipeline) or only
            check that each ``exists``.
        skip_unreadable: Drop images that cannot be read or decoded, and report them, instead of stopping.
        val_split: The split validated on while fitting. FER papers validate on the test split; with
            ``val_fraction`` or ``num_folds`` it is the held-out ``valid`` split.
        predict_root: A folder of images (nested, any common format) for ``nla predict``, or one image file.
        detect_faces: For ``predict``, ``validate`` and ``test``: find the largest face in each image and crop it the
            way aligned training crops are (for photos rather than aligned face crops; see ``nla.faces``). An image
            with no face found gets a prediction row that says so, or is evaluated whole.
        drop_last: Drop the last incomplete training batch.
        save_train_labels: When a label protocol is active, write the training labels actually used to
            ``<run dir>/train_labels.txt``, which ``train_label_file`` can load again.
    """

    #: How label files write class index 0 (RAF-DB writes labels 1..7).
    label_code_offset = 0
    #: A short name for run directories and logs.
    name = "data"

    def __init__(
        self,
        root: Optional[str] = None,
        batch_size: int = 32,
        num_workers: Optional[int] = None,
        image_size: int = 224,
        mean: Optional[RGB] = None,
        std: Optional[RGB] = None,
        augmentation: Augmentation = Augmentation(),
        pipeline: Pipeline = "auto",
        cache_dir: Optional[str] = None,
        cache_resolution: Optional[int] = None,
        max_cache_gb: float = 16.0,
        noise_rate: float = 0.0,
        noise_seed: int = 0,
        noise_source: NoiseSource = "auto",
        train_label_file: Optional[str] = None,
        imbalance_factor: Optional[float] = None,
        long_tail_seed: int = 0,
        long_tail_class_order: Optional[list[str]] = None,
        val_fraction: Optional[float] = None,
        num_folds: Optional[int] = None,
        fold: int = 0,
        group_pattern: Optional[str] = None,
        split_seed: int = 0,
        balanced_sampler: bool = False,
        check_images: ImageCheck = "decode",
        skip_unreadable: bool = False,
        val_split: Split = "test",
        predict_root: Optional[str] = None,
        detect_faces: bool = False,
        drop_last: bool = False,
        save_train_labels: bool = True,
    ) -> None:
        super().__init__()
        # The checkpoint carries these (image size, mean, std, protocol), so test and predict need no config;
        # they are not logged as the model's hyperparameters (the CLI logs the whole config).
        self.save_hyperparameters(logger=False)
        if isinstance(augmentation, dict):  # from a checkpoint's plain-dict hyperparameters
            augmentation = Augmentation(**augmentation)
        self.hparams["augmentation"] = dataclasses.asdict(augmentation)  # plain types: weights_only checkpoints
        if batch_size < 1:
            raise DataError(f"batch_size {batch_size} must be at least 1")
        check_image_size(image_size, "image_size", DataError)
        if num_workers is not None and num_workers < 0:
            raise DataError(f"num_workers {num_workers} must be >= 0")
        for name, value in (("mean", mean), ("std", std)):
            if value is not None and (
                len(value) != 3 or not all(0 <= v <= 1 for v in value) or (name == "std" and min(value) <= 0)
            ):
                raise DataError(
                    f"{name} {tuple(value)} must be three shares of 255 in [0, 1]"
                    + (", above 0" if name == "std" else "")
                )
        self.root = root
        self.batch_size = batch_size
        self.num_workers = min(8, available_cores()) if num_workers is None else num_workers
        self.image_size = image_size
        self.mean, self.std = (tuple(mean) if mean else None), (tuple(std) if std else None)
        self.augmentation = augmentation
        self.pipeline = pipeline
        self.cache_dir = cache_dir
        self.cache_resolution = cache_resolution
        self.max_cache_gb = max_cache_gb
        self.protocol = LabelProtocol(
            train_label_file,
            noise_rate,
            noise_seed,
            noise_source,
            imbalance_factor,
            long_tail_seed,
            tuple(long_tail_class_order) if long_tail_class_order else None,
        )
        self.holdout = (
            HoldOut(val_fraction, num_folds, fold, group_pattern, split_seed)
            if val_fraction is not None or num_folds is not None
            else None
        )
        if self.holdout is not None and val_split != "valid":
            val_split = "valid"  # the held-out part is what a fit validates on
        self.balanced_sampler = balanced_sampler
        self.check_images = check_images
        self.skip_unreadable = skip_unreadable
        self.val_split: Split = val_split
        self.predict_root = predict_root
        self.detector = FaceDetector() if detect_faces else None
        self.drop_last = drop_last
        self.save_train_labels = save_train_labels
        self.splits: dict[str, Samples] = {}
        self._labelled: dict[str, Samples] = {}  # read by prepare_data, checked and cached by setup
        self._predict_paths: Optional[list[str]] = None
        self.caches: dict[str, np.ndarray] = {}
        self.skipped: dict[str, list[str]] = {}
        self.protocol_notes: list[str] = []
        self._use_cache: Optional[bool] = None

    # --- what a subclass provides ---------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not name its classes")

    def read_split(self, split: Split) -> Samples:
        """The images and shipped labels of ``split``."""
        raise NotImplementedError(f"{type(self).__name__} cannot read a dataset")

    def has_split(self, split: Split) -> bool:
        """Whether the dataset ships ``split`` (a CK+-style folder ships none)."""
        return True

    def standard_noise_file(self, rate: float) -> Optional[Path]:
        """Where the dataset keeps its standard noisy-label file for ``rate``; ``None`` where it defines none."""
        return None

    def require_root(self) -> str:
        if not self.root:
            raise DataError(f"{type(self).__name__} needs the dataset folder: pass --data.root /path/to/the/dataset")
        if not Path(self.root).is_dir():
            raise DataError(
                f"{type(self).__name__}: --data.root {self.root!r} does not exist or is not a folder; "
                "pass the folder that holds the dataset"
            )
        return self.root

    # --- derived ------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_class_counts(self) -> list[int]:
        """Class counts of the training labels actually used (after hold-out, noise and long tail)."""
        return self.splits["train"].class_counts().tolist()

    @property
    def flipped(self) -> Optional[np.ndarray]:
        """Which training labels differ from the shipped ones (the noise mask), by training index."""
        return self.splits["train"].flipped if "train" in self.splits else None

    @property
    def train_batches(self) -> Optional[int]:
        """Training batches per epoch, once the training split is set up."""
        if "train" not in self.splits:
            return None
        n = len(self.splits["train"])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # --- setup: read, hold out, apply protocols, check --------------------------------------------

    def prepare_data(self) -> None:
        """Read the label files the command will use, with the noise and long-tail protocols (or list the images
        to predict), before a logger or a run folder is created: a wrong root or a bad label file stops the command
        at once. ``setup`` goes on from what was read here (in a process where Lightning does not call this hook, it
        reads them itself)."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        stage = fn.value if fn is not None else None
        if stage == "predict":
            self._predict_paths = self._predict_images()
        self._choose_splits(stage)
        for split in self._splits_for(stage):
            if split not in self.splits and split not in self._labelled:
                self._labelled[split] = self._label(split)
        if stage == "fit" and "train" in self._labelled:
            self._check_schedule(len(self._labelled["train"]))

    def _check_schedule(self, images: int) -> None:
        """The trainer's batch limit and validation interval against the batches an epoch of ``images`` holds:
        Lightning refuses them only once the fit loop starts, after the run folder and the logger exist."""
        trainer = self.trainer
        assert trainer is not None
        per_rank = math.ceil(images / trainer.world_size)
        full = per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)
        limit = trainer.limit_train_batches
        batches = min(full, limit) if isinstance(limit, int) else int(full * limit)
        if batches == 0:
            raise DataError(
                f"--trainer.limit_train_batches {limit} keeps none of the {full} training batches of an epoch "
                f"({per_rank} images, batches of {self.batch_size}); give a larger fraction or a count of batches"
            )
        interval = trainer.val_check_interval
        validates = trainer.check_val_every_n_epoch is not None and trainer.limit_val_batches > 0
        if isinstance(interval, int) and interval > batches and validates:
            raise DataError(
                f"--trainer.val_check_interval {interval} is more than the {batches} training batches of an epoch; "
                "give at most that many, a fraction of an epoch (e.g. 0.5), or --trainer.check_val_every_n_epoch null "
                "to count batches across epochs"
            )

    def setup(self, stage: Optional[str] = None) -> None:
        self._choose_splits(stage)
        for split in self._splits_for(stage):
            if split not in self.splits:
                self._load_split(split)
        if stage in ("fit", None) and (self.mean is None or self.std is None):
            self._measure_stats()

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
            samples = self._find_faces(samples, split)
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

    def _find_faces(self, samples: Samples, split: str) -> Samples:
        """Crop each image of an evaluation split to its largest face, or keep it whole where none is found."""
        detector = self.detector
        assert detector is not None

        def crop(path: str) -> tuple[tuple[int, int, int, int], bool]:
            image = load_image(path)
            found = detector.crop_box(image)
            return (found, True) if found is not None else ((0, 0, image.shape[1], image.shape[0]), False)

        check_files_exist(samples, split)
        with ThreadPoolExecutor(max_workers=max(self.num_workers, 1)) as pool:
            results = list(pool.map(crop, samples.paths))
        found = sum(ok for _, ok in results)
        rank_zero_info(
            f"{type(self).__name__} {split}: a face was found in {found} of {len(samples)} images"
            + (f"; the other {len(samples) - found} are evaluated whole" if found < len(samples) else "")
        )
        return dataclasses.replace(samples, boxes=np.asarray([box for box, _ in results], dtype=np.float32))

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
                self._use_cache = on_accelerator and self._estimated_cache_gb(samples) <= self.max_cache_gb
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

    def _normalisation(self) -> tuple[RGB, RGB]:
        if self.mean is None or self.std is None:
            raise DataError(
                "the normalisation mean and std are not known yet: fit first, or give --data.mean and --data.std"
            )
        return self.mean, self.std  # type: ignore[return-value]  # three values each, checked in __init__

    def train_dataloader(self) -> DataLoader:
        samples = self.splits["train"]
        sampler = pipelines.train_sampler(samples, self.balanced_sampler)
        if "train" in self.caches:
            return pipelines.cached_loader(samples, self.caches["train"], self.batch_size, sampler, self.drop_last)
        transform = train_transform(self.augmentation, self.image_size, *self._normalisation())
        dataset = FERImageDataset(samples, transform, self.image_size, two_views=True)
        return pipelines.decoding_loader(dataset, self.batch_size, sampler, self.num_workers, self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        samples = self.splits[split]
        trainer = self.trainer
        sampler = pipelines.eval_sampler(
            samples, trainer.world_size if trainer else 1, trainer.global_rank if trainer else 0
        )
        if split in self.caches:
            return pipelines.cached_loader(samples, self.caches[split], self.batch_size, sampler)
        dataset = FERImageDataset(samples, eval_transform(self.image_size, *self._normalisation()), self.image_size)
        return pipelines.decoding_loader(dataset, self.batch_size, sampler, self.num_workers)

    def eval_dataloader(self, split: Split) -> DataLoader:
        """Any split, the training split included (with its label protocol), resized and normalised only and decoded
        in workers: for applying a trained model outside a Trainer's own loops (``nla label-issues``)."""
        if self._use_cache is None:
            self._use_cache = False  # nothing is trained here: decoding once is enough
        if split not in self.splits:
            self._load_split(split)
        samples = self.splits[split]
        dataset = FERImageDataset(samples, eval_transform(self.image_size, *self._normalisation()), self.image_size)
        sampler = torch.utils.data.SequentialSampler(samples.labels)
        return pipelines.decoding_loader(dataset, self.batch_size, sampler, self.num_workers)

    def _predict_images(self) -> list[str]:
        if not self.predict_root:
            raise DataError("nla predict needs a folder of images: pass --data.predict_root <folder>")
        paths = list_images(self.predict_root)
        if not paths:
            raise DataError(f"prediction folder {self.predict_root!r} holds no image files")
        return paths

    def predict_dataloader(self) -> DataLoader:
        paths = self._predict_paths if self._predict_paths is not None else self._predict_images()
        transform = eval_transform(self.image_size, *self._normalisation())
        dataset = PredictImageDataset(paths, transform, self.image_size, self.detector)
        return pipelines.decoding_loader(
            dataset, self.batch_size, torch.utils.data.SequentialSampler(paths), self.num_workers
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # An image that could not be decoded inside a worker stops the run here, in the main process, as one line.
        if isinstance(batch, dict) and "error" in batch and "ok" not in batch:
            failed = [error for error in batch["error"] if error]
            if failed:
                raise DataError(failed[0] + (f" ({len(failed) - 1} more in this batch)" if len(failed) > 1 else ""))
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or batch["image"].dtype != torch.uint8:
            return batch
        mean, std = self._normalisation()
        if self.trainer is not None and self.trainer.training:
            views = batch_train_augment(batch["image"], self.augmentation, self.image_size, mean, std)
            n = len(views) // 2
            batch["views"], batch["image"], batch["image_mirror"] = views, views[:n], views[n:]
        else:
            batch["image"] = batch_eval_transform(batch["image"], self.image_size, mean, std)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"protocol_notes": self.protocol_notes, "class_names": self.class_names}


class RAFDBDataModule(FERDataModule):
    """RAF-DB basic, in the layout RAF-DB ships (``basic/EmoLabel``, ``basic/Image/aligned``) or the re-upload's
    ``DATASET/{train,test}/<label>/`` with ``{train,test}_labels.csv``; ``layout="auto"`` detects which.

    Classes, labels 1..7: Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral. RAF-DB has no
    validation split, so the paper's protocol validates on the test split.

    Args:
        layout: ``"auto"``, ``"basic"`` or ``"folders"``.
        mean: The authors' RAF-DB statistics by default.
        std: The authors' RAF-DB statistics by default.
    """

    label_code_offset = rafdb.LABEL_CODE_OFFSET
    name = "rafdb"

    def __init__(
        self,
        root: Optional[str] = None,
        layout: rafdb.Layout = "auto",
        mean: Optional[RGB] = rafdb.MEAN,
        std: Optional[RGB] = rafdb.STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, mean=mean, std=std, **kwargs)
        self.layout = layout

    @property
    def class_names(self) -> list[str]:
        return list(rafdb.CLASSES)

    def read_split(self, split: Split) -> Samples:
        if split == "valid":
            raise DataError(
                "RAF-DB has no validation split: validate on 'test' (the paper's protocol), or hold out part "
                "of the training split with --data.val_fraction"
            )
        return rafdb.read_rafdb(self.require_root(), split, self.layout)

    def standard_noise_file(self, rate: float) -> Optional[Path]:
        return rafdb.standard_noise_file(self.require_root(), rate, self.layout)


class FERPlusDataModule(FERDataModule):
    """FER+ (``FER2013Train``/``Valid``/``Test``) with majority-vote labels from ``fer2013new.csv``, else ``label.csv``.

    Classes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt (8), or the first 7.

    Args:
        num_classes: 8, or 7 with contempt dropped.
        label_source: ``"auto"`` (``fer2013new.csv`` when present), ``"fer2013new"`` or ``"label_csv"``.
    """

    name = "ferplus"

    def __init__(
        self,
        root: Optional[str] = None,
        num_classes: Literal[7, 8] = 8,
        label_source: ferplus.LabelSource = "auto",
        val_split: Split = "valid",
        **kwargs: Any,
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

    name = "affectnet"

    def __init__(
        self, root: Optional[str] = None, num_classes: Literal[7, 8] = 7, crop_face: bool = False, **kwargs: Any
    ) -> None:
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
    """Class folders of face images, with splits (``root/<split>/<class>/*``, splits ``train``, ``val`` or
    ``valid``, ``test``) or without (``root/<class>/*``, as CK+ or JAFFE ship).

    Without splits, a fit holds out a seeded, stratified share of each class for validation
    (``val_fraction``, 0.2 unless given, or ``num_folds`` and ``fold``); ``nla test`` evaluates the held-out
    part when a hold-out is set, and every image otherwise.

    Args:
        class_names: The classes in label order; ``None`` takes the sorted folder names.
    """

    name = "folder"

    def __init__(self, root: Optional[str] = None, class_names: Optional[list[str]] = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._class_names = list(class_names) if class_names else None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = list(generic.folder_classes(self.require_root()))
        return self._class_names

    @property
    def flat(self) -> bool:
        return not generic.has_split_folders(Path(self.require_root()))

    def has_split(self, split: Split) -> bool:
        return not self.flat

    def _choose_splits(self, stage: Optional[str]) -> None:
        if self.flat and self.holdout is None and stage in ("fit", None):
            self.holdout, self.val_split = HoldOut(val_fraction=0.2, seed=self.hparams["split_seed"]), "valid"
            rank_zero_info(
                f"{self.root} has no train/ and test/ folders: holding out 20% of each class for validation "
                "(set --data.val_fraction or --data.num_folds to choose)"
            )

    def read_split(self, split: Split) -> Samples:
        if self.flat:
            return generic.read_class_folders(self.require_root(), self.class_names)
        return generic.read_image_folder(self.require_root(), split, self.class_names)


class CSVDataModule(FERDataModule):
    """Lists of ``path,label`` in CSV files, one per split; paths are relative to ``root`` (else to the CSV).

    Args:
        class_names: The classes in label order (required); labels may be these names or their indices.
        train_csv: Training list (needed to fit, not to test).
        val_csv: Validation list (``None``: validate on ``test_csv``).
        test_csv: Test list.
    """

    name = "csv"

    def __init__(
        self,
        class_names: Optional[list[str]] = None,
        train_csv: Optional[str] = None,
        test_csv: Optional[str] = None,
        root: Optional[str] = None,
        val_csv: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("val_split", "valid" if val_csv else "test")
        if not class_names:
            raise DataError(
                "CSVDataModule needs the classes in label order: pass --data.class_names, e.g. '[neutral, happy, sad]'"
            )
        super().__init__(root, **kwargs)
        self._class_names = list(class_names)
        self.csv_files = {"train": train_csv, "valid": val_csv, "test": test_csv}

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    def read_split(self, split: Split) -> Samples:
        path = self.csv_files[split]
        if path is None:
            raise DataError(f"no CSV list for the {split} split; set --data.{split if split != 'valid' else 'val'}_csv")
        return generic.read_csv_list(self._resolve(path), self.class_names, self.root)
