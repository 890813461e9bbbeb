"""Reading FER datasets, label protocols, pixel pipelines and the DataModules that glue them together."""

from nla.data.base import FERDataModule
from nla.data.batch_augment import batch_eval_transform, batch_train_augment
from nla.data.cache import build_image_cache
from nla.data.checks import check_split
from nla.data.datamodules import (
    AffectNetDataModule,
    CSVDataModule,
    FERPlusDataModule,
    ImageFolderDataModule,
    RAFDBDataModule,
)
from nla.data.files import load_image
from nla.data.prediction import PredictionMedia
from nla.data.protocols import (
    LabelProtocol,
    add_label_noise,
    apply_label_file,
    long_tail_indices,
    long_tail_profile,
    read_label_file,
    write_label_file,
)
from nla.data.samples import DataError, Samples
from nla.data.sources.affectnet import read_affectnet
from nla.data.sources.ferplus import majority_vote, read_ferplus
from nla.data.sources.generic import read_class_folders, read_csv_list, read_image_folder
from nla.data.sources.rafdb import read_rafdb
from nla.data.splits import HoldOut
from nla.data.transforms import Augmentation, eval_transform, train_transform

__all__ = [
    "AffectNetDataModule",
    "Augmentation",
    "CSVDataModule",
    "DataError",
    "FERDataModule",
    "FERPlusDataModule",
    "HoldOut",
    "ImageFolderDataModule",
    "LabelProtocol",
    "PredictionMedia",
    "RAFDBDataModule",
    "Samples",
    "add_label_noise",
    "apply_label_file",
    "batch_eval_transform",
    "batch_train_augment",
    "build_image_cache",
    "check_split",
    "eval_transform",
    "load_image",
    "long_tail_indices",
    "long_tail_profile",
    "majority_vote",
    "read_affectnet",
    "read_class_folders",
    "read_csv_list",
    "read_ferplus",
    "read_image_folder",
    "read_label_file",
    "read_rafdb",
    "train_transform",
    "write_label_file",
]
