"""Backbones: timm models, dlib's face-recognition ResNet registered among them, and the weights a run starts from."""

from nla.backbones import dlib_resnet as dlib_resnet  # registers dlib_resnet29 with timm
from nla.backbones.weights import (
    DEFAULT_IGNORED_KEYS,
    NLA_BACKBONE_PREFIX,
    UnsafeWeightsError,
    WeightsMismatchError,
    classifier_prefixes,
    create_backbone,
    load_pretrained_weights,
    load_trusted,
    read_state_dict,
    require_timm_model,
    require_torch_file,
)

__all__ = [
    "DEFAULT_IGNORED_KEYS",
    "NLA_BACKBONE_PREFIX",
    "UnsafeWeightsError",
    "WeightsMismatchError",
    "classifier_prefixes",
    "create_backbone",
    "load_pretrained_weights",
    "load_trusted",
    "read_state_dict",
    "require_timm_model",
    "require_torch_file",
]
