"""The LightningDataModule every dataset's DataModule derives from: :class:`FERDataModule`, aligned face crops with
the NLA training recipe.

It holds the settings and serves batches. Preparing each split (reading it with the dataset's source, holding out
a validation split, the label protocols, the image checks and the cache) is its part
:class:`nla.data.preparation.SplitPreparation`; the batches come from one of the two pixel pipelines
(:mod:`nla.data.pipelines`). Each dataset's DataModule, in :mod:`nla.data.datamodules`, only says how a split is
read and what the classes are.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from nla.data import pipelines
from nla.data.batch_augment import batch_eval_transform, batch_train_augment
from nla.data.checks import ImageCheck, check_schedule
from nla.data.datasets import FERImageDataset
from nla.data.media import list_media
from nla.data.photos import FaceChoice, PredictionMedia
from nla.data.preparation import Split, SplitPreparation
from nla.data.protocols import LabelProtocol, NoiseKind, NoiseSource
from nla.data.samples import DataError, Samples
from nla.data.splits import HoldOut
from nla.data.transforms import Augmentation, eval_transform, train_transform
from nla.errors import check_image_size
from nla.faces import Backend, FaceDetector

Pipeline = Literal["auto", "cached", "albumentations"]
RGB = tuple[float, float, float]
#: The input side where neither the config nor a model says one.
DEFAULT_IMAGE_SIZE = 224


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which a cluster's allotment sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class FERDataModule(SplitPreparation, LightningDataModule):
    """Aligned face crops for facial expression recognition, with the NLA training recipe.

    Args:
        root: The dataset folder (see each subclass for its layout); ``--data.root`` on the command line.
        batch_size: Training and evaluation batch size (the paper: 32).
        num_workers: DataLoader workers for the albumentations pipeline and for decoding; ``None`` takes
            the CPU cores available to this process, at most 8.
        image_size: Side of the square network input; ``None`` takes the backbone's (timm's pretrained config:
            224 for ResNet-18, as the paper; 150 for ``dlib_resnet29``).
        mean: Per-channel mean for normalising, as a share of 255; ``None`` takes the normalisation of the
            model's start (``--model.pretrained face`` or ``imagenet``), else the dataset's own statistics where it
            has them (RAF-DB), else measures it on the training images (once; kept in a small cache file). The
            checkpoint records what was used.
        std: Per-channel std for normalising, as a share of 255; ``None`` is chosen as ``mean`` is.
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
        noise_kind: ``symmetric`` flips labels to any other class; ``pair_flip``, ``annotator`` (where FER+'s ten
            annotators disagree with the majority: fear taken for surprise, disgust for anger, ...) and ``matrix``
            (``noise_matrix``) flip ``noise_rate`` of each class along a confusion matrix (seeded, generated).
        noise_matrix: A CSV of class names and shares (a header, then a row per class) for ``noise_kind: matrix``.
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
        predict_root: A folder of images and videos (nested, any common format) for ``nla predict``, or one file.
        detect_faces: For ``predict``, ``validate`` and ``test``: find the faces in each image (for photos rather than
            aligned face crops; see ``nla.faces``) and crop them as the training images were aligned. An image with
            no face found gets a prediction row that says so, or is evaluated whole.
        faces: ``largest``, or ``all`` the faces of a photo or frame (``predict``: a row for each).
        face_detector: ``auto`` (the best installed) or ``haar`` (OpenCV's cascades).
        align_faces: Rotate and scale faces the detector gives landmarks for so the eyes and mouth land where the
            training crops have them.
        fps: Frames sampled per second of video by ``predict``.
        draw_faces: ``predict`` also writes each photo with its faces boxed and labelled (``<output>/faces/``).
        drop_last: Drop the last incomplete training batch.
        save_train_labels: When a label protocol is active, write the training labels actually used to
            ``<run dir>/train_labels.txt``, which ``train_label_file`` can load again.
    """

    #: How label files write class index 0 (RAF-DB writes labels 1..7).
    label_code_offset = 0
    #: A short name for run directories and logs.
    name = "data"
    #: The dataset's own normalisation (shares of 255), used when neither the config nor the model's start gives one.
    dataset_mean: Optional[RGB] = None
    dataset_std: Optional[RGB] = None

    def __init__(
        self,
        root: Optional[str] = None,
        batch_size: int = 32,
        num_workers: Optional[int] = None,
        image_size: Optional[int] = None,
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
        noise_kind: NoiseKind = "symmetric",
        noise_matrix: Optional[str] = None,
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
        faces: FaceChoice = "largest",
        face_detector: Backend = "auto",
        align_faces: bool = True,
        fps: float = 2.0,
        draw_faces: bool = False,
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
        if image_size is not None:
            check_image_size(image_size, "image_size", DataError)
        if num_workers is not None and num_workers < 0:
            raise DataError(f"num_workers {num_workers} must be >= 0")
        for name, value in (("mean", mean), ("std", std)):  # a std may pass 1: dlib scales by 256, not 255
            if value is not None and (
                len(value) != 3
                or not all(math.isfinite(v) for v in value)
                or (name == "mean" and not all(0 <= v <= 1 for v in value))
                or (name == "std" and min(value) <= 0)
            ):
                shares = "in [0, 1]" if name == "mean" else "above 0"
                raise DataError(f"{name} {tuple(value)} must be three shares of 255 {shares}")
        self.root = root
        self.batch_size = batch_size
        self.num_workers = min(8, available_cores()) if num_workers is None else num_workers
        self._image_size = image_size
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
            noise_kind,
            noise_matrix,
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
        self.detector = FaceDetector(face_detector, align=align_faces) if detect_faces else None
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise DataError(f"fps {fps} must be a number above 0: frames sampled per second of video")
        self.faces, self.fps, self.draw_faces = faces, fps, draw_faces
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

    # --- the input: size and normalisation ----------------------------------------------------------

    @property
    def image_size(self) -> int:
        """The side of the network input, once :meth:`resolve_input` has settled it."""
        if self._image_size is None:
            self.resolve_input()
        assert self._image_size is not None
        return self._image_size

    def resolve_input(self, model: Any = None) -> None:
        """Settle the input size and normalisation the config leaves open, from the model's start (its
        ``input_spec()``: the backbone's input size, its smallest, the start's normalisation), else the dataset's
        own statistics; refuse a size below what the backbone takes. ``model`` defaults to the trainer's."""
        if model is None and self.trainer is not None:
            model = self.trainer.lightning_module
        spec = model.input_spec() if callable(getattr(model, "input_spec", None)) else None
        if self._image_size is None:
            self._image_size = spec.size if spec is not None else DEFAULT_IMAGE_SIZE
        if spec is not None and self.image_size < spec.min_size:
            backbone = getattr(model, "hparams", {}).get("backbone", "the backbone")
            raise DataError(
                f"--data.image_size {self.image_size} is smaller than {backbone} takes: give {spec.min_size} or more"
            )
        if self.mean is None and self.std is None:
            if spec is not None and spec.mean is not None:
                self.mean, self.std = spec.mean, spec.std
            elif self.dataset_mean is not None:
                self.mean, self.std = self.dataset_mean, self.dataset_std
        self.hparams.update(image_size=self.image_size, mean=self.mean, std=self.std)  # what the checkpoint records

    # --- setup: read, hold out, apply protocols, check --------------------------------------------

    def prepare_data(self) -> None:
        """Read the label files the command will use, with the noise and long-tail protocols (or list the images
        to predict), before a logger or a run folder is created: a wrong root or a bad label file stops the command
        at once. ``setup`` goes on from what was read here (in a process where Lightning does not call this hook, it
        reads them itself)."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        stage = fn.value if fn is not None else None
        self.resolve_input()
        if stage == "predict":
            self._predict_paths = self._predict_images()
        self._choose_splits(stage)
        for split in self._splits_for(stage):
            if split not in self.splits and split not in self._labelled:
                self._labelled[split] = self._label(split)
        if stage == "fit" and "train" in self._labelled:
            check_schedule(self.trainer, len(self._labelled["train"]), self.batch_size, self.drop_last)

    def setup(self, stage: Optional[str] = None) -> None:
        self.resolve_input()
        self._choose_splits(stage)
        for split in self._splits_for(stage):
            if split not in self.splits:
                self._load_split(split)
        if stage in ("fit", None) and (self.mean is None or self.std is None):
            self._measure_stats()

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
        self.resolve_input()
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
            raise DataError("nla predict needs a folder of images or videos: pass --data.predict_root <folder>")
        paths = list_media(self.predict_root)
        if not paths:
            raise DataError(f"prediction folder {self.predict_root!r} holds no image or video files")
        return paths

    def predict_dataloader(self) -> DataLoader:
        paths = self._predict_paths if self._predict_paths is not None else self._predict_images()
        transform = eval_transform(self.image_size, *self._normalisation())
        media = PredictionMedia(paths, transform, self.image_size, self.detector, self.faces, self.fps)
        return pipelines.media_loader(media, self.batch_size, min(self.num_workers, len(paths)))

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
