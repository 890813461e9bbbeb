"""The network input, one record for every command: :class:`Preprocessing`, the image size and normalisation that
train, test, predict, export and label-issues all read, and the resize that makes an image that size (nothing here
imports PyTorch: ``nla export --help`` states the contract without it).

A fit settles what the config leaves open from the model's start (its backbone's input size; for a face or ImageNet
start, its normalisation), else the dataset's own statistics, else a measurement of the training images; the
checkpoint carries the settled record, so every later command reads it with no flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional

from nla.errors import MIN_IMAGE_SIZE, DataError

RGB = tuple[float, float, float]

#: The input side where neither the config nor a model says one.
DEFAULT_IMAGE_SIZE = 224

#: How an image becomes S x S, in training and in every later use of the model (an exported one included).
RESIZE = {
    "interpolation": "bilinear",
    "pixel_centres": "half-pixel (align_corners=False)",
    "antialias": False,
    "opencv": "cv2.resize(image, (S, S), interpolation=cv2.INTER_LINEAR)",
    "torch": "torch.nn.functional.interpolate(x, size=(S, S), mode='bilinear', align_corners=False, antialias=False)",
}


#: What an exported model takes and gives (``nla export``).
EXPORT_CONTRACT = """The exported graph takes **float32 RGB images, N x 3 x S x S, with values 0..255**, already
resized to S x S, and returns **logits** (softmax gives probabilities). Normalisation with the training mean and std
is inside the graph. The resize must be the one training used: bilinear with half-pixel centres and no antialiasing, as
OpenCV's ``cv2.resize(image, (S, S), interpolation=cv2.INTER_LINEAR)`` does (PIL's bilinear antialiases when
shrinking and gives other pixels). A JSON file beside the model records S, the resize, the mean and std, the class
names and this contract. An ONNX export is one self-contained file."""


@dataclass(frozen=True)
class Preprocessing:
    """The network input.

    Args:
        image_size: Side of the square input; ``None`` takes the backbone's (timm's pretrained config: 224 for
            ResNet-18, as the paper; 150 for ``dlib_resnet29``).
        mean: Per-channel mean for normalising, as a share of 255; ``None`` takes the normalisation of the model's
            start (``--model.pretrained face`` or ``imagenet``), else the dataset's own statistics where it has
            them (RAF-DB), else measures it on the training images (kept in a small cache file).
        std: Per-channel std, as a share of 255 (it may pass 1: dlib divides by 256); ``None``: as ``mean``.
    """

    image_size: Optional[int] = None
    mean: Optional[RGB] = None
    std: Optional[RGB] = None

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise DataError(f"image_size {self.image_size} is too small; give the side of the network input, e.g. 224")
        for name, value in (("mean", self.mean), ("std", self.std)):
            if value is None:
                continue
            fits = len(value) == 3 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            fits = fits and (all(0 <= v <= 1 for v in value) if name == "mean" else min(value) > 0)
            if not fits:
                shares = "in [0, 1]" if name == "mean" else "above 0"
                raise DataError(f"{name} {tuple(value)} must be three shares of 255 {shares}")
            object.__setattr__(self, name, tuple(float(v) for v in value))

    @property
    def normalised(self) -> bool:
        return self.mean is not None and self.std is not None

    def settle(self, spec: Any = None, dataset_mean: Optional[RGB] = None, dataset_std: Optional[RGB] = None):
        """This record with what it leaves open taken from ``spec`` (a backbone's
        :class:`nla.backbones.starts.InputSpec`), else the dataset's statistics; a size below what the backbone
        takes is refused. The normalisation may still be open: then it is measured on the training images."""
        size = self.image_size or (spec.size if spec is not None else DEFAULT_IMAGE_SIZE)
        if spec is not None and size < spec.min_size:
            raise DataError(f"--data.preprocessing.image_size {size} is smaller than {spec.backbone} takes: give "
                            f"{spec.min_size} or more")  # fmt: skip
        mean, std = self.mean, self.std
        if mean is None and std is None:
            if spec is not None and spec.mean is not None:
                mean, std = spec.mean, spec.std
            elif dataset_mean is not None:
                mean, std = dataset_mean, dataset_std
        return replace(self, image_size=size, mean=mean, std=std)

    def require(self) -> tuple[int, RGB, RGB]:
        """``(image_size, mean, std)``, once settled."""
        if self.image_size is None or self.mean is None or self.std is None:
            raise DataError(
                "the input size and normalisation are not known yet: fit first, or give --data.preprocessing.mean "
                "and --data.preprocessing.std"
            )
        return self.image_size, self.mean, self.std

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }
