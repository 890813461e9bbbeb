"""The LightningDataModule every dataset's DataModule derives from: :class:`FERDataModule`, aligned face crops with
the NLA training recipe.

Its settings come in typed groups, each a frozen dataclass that LightningCLI nests (``--data.protocol.noise_rate``):
``preprocessing`` (the network input), ``augmentation``, ``protocol`` (the training labels), ``holdout``, ``cache``,
``faces`` and ``prediction``. Preparing each split (reading it, holding out, the protocols, the image checks and the
cache) is the :class:`nla.data.preparation.SplitPreparation` it owns; the batches come from one of the two pixel
pipelines (:mod:`nla.data.pipelines`) as :class:`nla.batch.FaceBatch`. Each dataset's DataModule, in
:mod:`nla.data.datamodules`, only says how a split is read and what the classes are.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from nla.batch import FaceBatch, MediaBatch
from nla.data import pipelines
from nla.data.batch_augment import batch_eval_transform, batch_train_augment
from nla.data.cache import CacheSettings
from nla.data.checks import ImageCheck, check_schedule
from nla.data.datasets import FERImageDataset
from nla.data.files import list_media
from nla.data.prediction import FaceSettings, Prediction, PredictionMedia
from nla.data.preparation import ImageChecks, PipelineMode, Split, SplitPreparation
from nla.data.protocols import LabelProtocol, write_label_file
from nla.data.samples import DataError, Samples
from nla.data.splits import HoldOut
from nla.data.stats import measure_stats
from nla.data.transforms import Augmentation, eval_transform, train_transform
from nla.data.upgrade import MOVED_OPTIONS
from nla.preprocessing import RGB, Preprocessing

Group = TypeVar("Group")


def dataset_arguments(data_class: type) -> list[str]:
    """The arguments a DataModule class takes beyond :class:`FERDataModule`'s and its folder: what says which dataset
    it reads and how (a layout, classes, label files), fixed for the life of a run."""
    shared = set(inspect.signature(FERDataModule).parameters)
    own: list[str] = []
    for klass in data_class.__mro__:
        if klass is FERDataModule or not (isinstance(klass, type) and issubclass(klass, FERDataModule)):
            continue
        for name, parameter in inspect.signature(klass).parameters.items():
            if name not in shared and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                own.append(name)
    return sorted(set(own))


def as_group(value: Any, group: type[Group]) -> Group:
    """A settings group from itself or from a checkpoint's plain dict."""
    if isinstance(value, group):
        return value
    if isinstance(value, dict):
        return group(**value)
    raise DataError(f"expected the {group.__name__} settings, got {value!r}")


class FERDataModule(LightningDataModule):
    """Aligned face crops for facial expression recognition, with the NLA training recipe.

    Args:
        root: The dataset folder (see each subclass for its layout); ``--data.root`` on the command line.
        batch_size: Training and evaluation batch size (the paper: 32).
        num_workers: DataLoader workers for the albumentations pipeline and for decoding; ``None`` takes
            the CPU cores available to this process, at most 8.
        val_split: The split validated on while fitting. FER papers validate on the test split; with a hold-out
            it is the held-out ``valid`` split.
        preprocessing: The network input: size and normalisation (settled from the model's start when left
            ``null``), read by every command that uses the model.
        augmentation: The training augmentation's settings.
        protocol: What happens to the training labels: a label file, noise, a long tail.
        holdout: A validation split held out of the training split, for datasets that ship none (CK+).
        pipeline: ``cached`` (decode once, augment whole batches on the device), ``albumentations`` (per
            sample in workers) or ``auto`` (cached when training on a GPU and the cache fits ``cache.max_gb``).
        cache: The decode-once cache of the ``cached`` pipeline.
        faces: Finding the faces in photos (``predict``, ``validate``, ``test``) rather than aligned crops.
        prediction: What ``nla predict`` reads and writes.
        balanced_sampler: Draw training batches with probability inversely proportional to class size.
        drop_last: Drop the last incomplete training batch.
        check_images: Before training, ``decode`` every image (always so for the cached pipeline) or only
            check that each ``exists``.
        skip_unreadable: Drop images that cannot be read or decoded, and report them, instead of stopping.
        save_train_labels: When a label protocol is active, write the training labels actually used to
            ``<run dir>/train_labels.txt``, which ``protocol.train_label_file`` can load again.
    """

    #: How label files write class index 0 (RAF-DB writes labels 1..7).
    label_code_offset = 0
    #: A short name for run directories and logs.
    name = "data"
    #: The dataset's own normalisation (shares of 255), used when neither the config nor the model's start gives one.
    dataset_mean: ClassVar[Optional[RGB]] = None
    dataset_std: ClassVar[Optional[RGB]] = None
    #: Where each setting of nla 0.2's flat DataModule went, for the one line that says so.
    moved_options: ClassVar[dict[str, str]] = MOVED_OPTIONS
    #: The settings groups, by name: what the checkpoint holds as plain dicts.
    groups: ClassVar[dict[str, type]] = {
        "preprocessing": Preprocessing,
        "augmentation": Augmentation,
        "protocol": LabelProtocol,
        "holdout": HoldOut,
        "cache": CacheSettings,
        "faces": FaceSettings,
        "prediction": Prediction,
    }

    def __init__(
        self,
        root: Optional[str] = None,
        batch_size: int = 32,
        num_workers: Optional[int] = None,
        val_split: Split = "test",
        preprocessing: Preprocessing = Preprocessing(),
        augmentation: Augmentation = Augmentation(),
        protocol: LabelProtocol = LabelProtocol(),
        holdout: HoldOut = HoldOut(),
        pipeline: PipelineMode = "auto",
        cache: CacheSettings = CacheSettings(),
        faces: FaceSettings = FaceSettings(),
        prediction: Prediction = Prediction(),
        balanced_sampler: bool = False,
        drop_last: bool = False,
        check_images: ImageCheck = "decode",
        skip_unreadable: bool = False,
        save_train_labels: bool = True,
    ) -> None:
        super().__init__()
        # The checkpoint carries these (the input, the protocol), so test and predict need no config; they are not
        # logged as the model's hyperparameters (the CLI logs the whole config).
        self.save_hyperparameters(logger=False)
        if batch_size < 1:
            raise DataError(f"batch_size {batch_size} must be at least 1")
        if num_workers is not None and num_workers < 0:
            raise DataError(f"num_workers {num_workers} must be >= 0")
        # "~/data/RAF-DB" in a YAML file, where no shell expands it
        self.root = os.path.expanduser(root) if root else root
        if self.root != root:
            self.hparams["root"] = self.root
        self.batch_size = batch_size
        self.num_workers = min(8, pipelines.available_cores()) if num_workers is None else num_workers
        self.preprocessing = as_group(preprocessing, Preprocessing)
        self.augmentation = as_group(augmentation, Augmentation)
        self.protocol = as_group(protocol, LabelProtocol)
        self.holdout = as_group(holdout, HoldOut)
        self.cache = as_group(cache, CacheSettings)
        self.faces = as_group(faces, FaceSettings)
        self.prediction = as_group(prediction, Prediction)
        for group in self.groups:  # plain types in the checkpoint: it loads with weights_only=True
            self.hparams[group] = dataclasses.asdict(getattr(self, group))
        self.val_split: Split = val_split
        self.balanced_sampler = balanced_sampler
        self.drop_last = drop_last
        self.save_train_labels = save_train_labels
        self.detector = self.faces.make_detector()
        self.preparation = SplitPreparation(
            self,
            self.protocol,
            self.holdout,
            ImageChecks(check_images, skip_unreadable),
            pipeline,
            self.cache,
            type(self).__name__,
        )
        self._predict_paths: Optional[list[str]] = None

    # --- what a subclass provides ---------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not name its classes")

    def read_split(self, split: Split) -> Samples:
        """The images and shipped labels of ``split``."""
        raise NotImplementedError(f"{type(self).__name__} cannot read a dataset")

    def has_split(self, split: Split) -> bool:
        """Whether the dataset ships ``split`` (a CK+-style folder ships none, and holds out 20% to validate on)."""
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
    def splits(self) -> dict[str, Samples]:
        """The splits set up so far, by name."""
        return self.preparation.splits

    @property
    def protocol_notes(self) -> list[str]:
        """What the label protocol did to the training split, one note per step."""
        return self.preparation.protocol_notes

    @property
    def skipped(self) -> dict[str, list[str]]:
        """The unreadable images dropped from each split (``skip_unreadable``)."""
        return self.preparation.skipped

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
    def true_labels(self) -> Optional[np.ndarray]:
        """The training images' labels as the dataset ships them, by training index, where the label protocol changed
        any (a noise file or the seeded generator): what the label-noise figures of a run compare with. ``None`` where
        the labels trained on are the shipped ones."""
        flipped = self.flipped
        return self.splits["train"].shipped_labels if flipped is not None and flipped.any() else None

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
        """The side of the network input, once settled."""
        if self.preprocessing.image_size is None:
            self.settle_input()
        assert self.preprocessing.image_size is not None
        return self.preprocessing.image_size

    def settle_input(self, model: Any = None) -> Preprocessing:
        """Settle what :attr:`preprocessing` leaves open from the model's start (its ``input_spec()``), else the
        dataset's statistics; refuse a size below what the backbone takes. ``model`` defaults to the trainer's."""
        if model is None and self.trainer is not None:
            model = self.trainer.lightning_module
        spec = model.input_spec() if callable(getattr(model, "input_spec", None)) else None
        self.preprocessing = self.preprocessing.settle(spec, self.dataset_mean, self.dataset_std)
        self.hparams["preprocessing"] = self.preprocessing.to_dict()  # what the checkpoint records
        return self.preprocessing

    # --- setup: read, hold out, apply protocols, check --------------------------------------------

    def prepare_data(self) -> None:
        """Read the label files the command will use, with the noise and long-tail protocols (or list the images
        to predict), before a logger or a run folder is created: a wrong root or a bad label file stops the command
        at once. ``setup`` goes on from what was read here (in a process where Lightning does not call this hook, it
        reads them itself)."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        stage = fn.value if fn is not None else None
        self.settle_input()
        if stage == "predict":
            self._predict_paths = self._predict_images()
        for split in self._splits_for(stage):
            self.labelled(split, stage)
        if stage == "fit":
            labelled = self.labelled("train", stage)
            check_schedule(self.trainer, len(labelled), self.batch_size, self.drop_last)

    def setup(self, stage: Optional[str] = None) -> None:
        self.settle_input()
        for split in self._splits_for(stage):
            samples = self.labelled(split, stage)
            self.preparation.load(split, samples, self.image_size, self.detector, self.num_workers, self.trainer)
        if stage in ("fit", None) and not self.preprocessing.normalised:
            self._measure_stats()

    def _splits_for(self, stage: Optional[str]) -> list[Split]:
        self.val_split = self.preparation.val_split(self.val_split, stage)
        return self.preparation.splits_for(stage, self.val_split)

    def labelled(self, split: str, stage: Optional[str] = None) -> Samples:
        """A split's images and the labels it trains or is evaluated with (the protocol applied); no image is
        opened."""
        return self.preparation.label(
            split, stage, self._write_train_labels if self.save_train_labels else None, self.drop_last * self.batch_size
        )

    def _write_train_labels(self, samples: Samples) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / "train_labels.txt"
        if path.exists():
            return  # a resumed run: the protocol is seeded and unchanged (the CLI refuses a changed one)
        write_label_file(path, samples.names, samples.labels, self.label_code_offset)

    def _measure_stats(self) -> None:
        mean, std = measure_stats(
            self.splits["train"],
            self.preparation.caches.get("train"),
            cache_dir=self.cache.dir,
            workers=max(self.num_workers, 1),
        )
        self.preprocessing = dataclasses.replace(self.preprocessing, mean=mean, std=std)
        self.hparams["preprocessing"] = self.preprocessing.to_dict()  # what the model was trained with
        rank_zero_info(f"{type(self).__name__}: normalising with the training images' mean {mean} and std {std}")

    # --- batches ------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        samples = self.splits["train"]
        sampler = pipelines.train_sampler(samples, self.balanced_sampler)
        cache = self.preparation.caches.get("train")
        if cache is not None:
            return pipelines.cached_loader(samples, cache, self.batch_size, sampler, self.drop_last)
        size, mean, std = self.preprocessing.require()
        dataset = FERImageDataset(samples, train_transform(self.augmentation, size, mean, std), size, two_views=True)
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
        cache = self.preparation.caches.get(split)
        if cache is not None:
            return pipelines.cached_loader(samples, cache, self.batch_size, sampler)
        size, mean, std = self.preprocessing.require()
        dataset = FERImageDataset(samples, eval_transform(size, mean, std), size)
        return pipelines.decoding_loader(dataset, self.batch_size, sampler, self.num_workers)

    def eval_dataloader(self, split: Split) -> DataLoader:
        """Any split, the training split included (with its label protocol), resized and normalised only and decoded
        in workers: for applying a trained model outside a Trainer's own loops (``nla label-issues``)."""
        self.settle_input()
        self.preparation.decode_only()
        samples = self.labelled(split, None)
        self.preparation.load(split, samples, self.image_size, self.detector, self.num_workers, self.trainer)
        size, mean, std = self.preprocessing.require()
        dataset = FERImageDataset(self.splits[split], eval_transform(size, mean, std), size)
        sampler = torch.utils.data.SequentialSampler(self.splits[split].labels)
        return pipelines.decoding_loader(dataset, self.batch_size, sampler, self.num_workers)

    def _predict_images(self) -> list[str]:
        if not self.prediction.root:
            raise DataError("nla predict needs a folder of images or videos: pass --data.prediction.root <folder>")
        paths = list_media(self.prediction.root)
        if not paths:
            raise DataError(f"prediction folder {self.prediction.root!r} holds no files")
        return paths

    def predict_dataloader(self) -> DataLoader:
        paths = self._predict_paths if self._predict_paths is not None else self._predict_images()
        size, mean, std = self.preprocessing.require()
        media = PredictionMedia(
            paths, eval_transform(size, mean, std), size, self.detector, self.faces.choice, self.prediction.fps
        )
        return pipelines.media_loader(media, self.batch_size, min(self.num_workers, len(paths)))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # An image that could not be decoded inside a worker stops the run here, in the main process, as one line
        # (a prediction's unreadable file gets a row that says why instead).
        if isinstance(batch, FaceBatch) and batch.error and not isinstance(batch, MediaBatch):
            failed = [error for error in batch.error if error]
            if failed:
                raise DataError(failed[0] + (f" ({len(failed) - 1} more in this batch)" if len(failed) > 1 else ""))
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, FaceBatch) or batch.image.dtype != torch.uint8:
            return batch
        size, mean, std = self.preprocessing.require()
        if self.trainer is not None and self.trainer.training:  # the cached pipeline: augmented here, on the device
            return batch.with_views(batch_train_augment(batch.image, self.augmentation, size, mean, std))
        batch.image = batch_eval_transform(batch.image, size, mean, std)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"protocol_notes": self.preparation.protocol_notes, "class_names": self.class_names}
