"""One DataModule per dataset, each saying only how its splits are read (:mod:`nla.data.sources`) and what its
classes are; everything else is :class:`nla.data.base.FERDataModule`'s.

- :class:`RAFDBDataModule`: RAF-DB basic, as shipped or as the re-upload's folders;
- :class:`FERPlusDataModule`: FER+ with the majority vote of its ten annotators;
- :class:`AffectNetDataModule`: AffectNet's manually annotated images;
- :class:`ImageFolderDataModule`: class folders of face images, with or without splits (CK+, JAFFE);
- :class:`CSVDataModule`: ``path,label`` lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from lightning.pytorch.utilities import rank_zero_info

from nla.data.base import FERDataModule, Split
from nla.data.samples import DataError, Samples
from nla.data.sources import affectnet, ferplus, generic, rafdb


class RAFDBDataModule(FERDataModule):
    """RAF-DB basic, in the layout RAF-DB ships (``basic/EmoLabel``, ``basic/Image/aligned``) or the re-upload's
    ``DATASET/{train,test}/<label>/`` with ``{train,test}_labels.csv``; ``layout="auto"`` detects which.

    Classes, labels 1..7: Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral. RAF-DB has no
    validation split, so the paper's protocol validates on the test split.

    Normalisation, unless the config or the model's start gives one: the authors' RAF-DB statistics.

    Args:
        layout: ``"auto"``, ``"basic"`` or ``"folders"``.
    """

    label_code_offset = rafdb.LABEL_CODE_OFFSET
    name = "rafdb"
    dataset_mean, dataset_std = rafdb.MEAN, rafdb.STD

    def __init__(self, root: Optional[str] = None, layout: rafdb.Layout = "auto", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.layout = layout

    @property
    def class_names(self) -> list[str]:
        return list(rafdb.CLASSES)

    def read_split(self, split: Split) -> Samples:
        if split == "valid":
            raise DataError(
                "RAF-DB has no validation split: validate on 'test' (the paper's protocol), or hold out part "
                "of the training split with --data.holdout.val_fraction"
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
    (``holdout.val_fraction``, 0.2 unless given, or ``holdout.num_folds`` and ``holdout.fold``); ``nla test``
    evaluates the held-out part when a hold-out is set, and every image otherwise.

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

    def read_split(self, split: Split) -> Samples:
        if self.flat:
            return generic.read_class_folders(self.require_root(), self.class_names)
        root = self.require_root()
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and split == self.val_split == "test" and generic.find_split_folder(Path(root), "valid"):
            rank_zero_info(  # FER papers validate on test; a folder dataset's own val split is one option away
                f"{type(self).__name__}: validating on test/ as FER papers do; {root} has a val folder too, which "
                "--data.val_split valid validates on"
            )
        return generic.read_image_folder(root, split, self.class_names)


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
        return generic.read_csv_list(self.preparation.resolve(path), self.class_names, self.root)
