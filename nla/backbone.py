"""Creating a timm backbone and loading pre-trained weights from a user's file."""

from __future__ import annotations

import fnmatch
import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

# Keys that the MS-Celeb-1M and IJB-A ResNet-18 checkpoints shared in FER carry beyond the backbone:
# the old classifier is dropped by name (see ``classifier_prefixes``); ``feature.*`` is the IJB-A
# embedding layer that sits between the pooled features and its 87,020-way classifier.
DEFAULT_IGNORED_KEYS: tuple[str, ...] = ("feature.*",)


class WeightsMismatchError(RuntimeError):
    """A weights file whose keys or shapes do not fit the backbone."""


def create_backbone(name: str = "resnet18", num_classes: int = 7, weights: str | None = None, **kwargs) -> nn.Module:
    """A timm model with a fresh ``num_classes``-way head, randomly initialised or from ``weights``.

    timm's hub weights are never fetched: pre-trained weights come from a file the user downloaded.
    """
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as error:  # timm's "Unknown model"
        raise ValueError(f"backbone {name!r} is not a timm model ({error}); see timm.list_models()") from None
    if weights:
        load_pretrained_weights(model, weights)
    return model


def classifier_prefixes(model: nn.Module) -> list[str]:
    """The state-dict prefixes of the model's classification head, e.g. ``["fc."]`` for a ResNet."""
    names = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    names = [names] if isinstance(names, str) else list(names)
    return [f"{name}." for name in names]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a plain state dict, or a dict holding ``'state_dict'`` (or ``'model'``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained weights file {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Old checkpoints pickle extra Python objects; the user chose this file, so allow them.
        log.warning("%s holds more than tensors; loading it with weights_only=False", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsMismatchError(
            f"{path} is not a state dict: expected a mapping of names to tensors, or a dict with 'state_dict'"
        )
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def load_pretrained_weights(
    model: nn.Module, path: str | Path, ignore: Sequence[str] = DEFAULT_IGNORED_KEYS
) -> list[str]:
    """Load a backbone's weights into ``model`` from ``path``, keeping the model's own head.

    A ``module.`` prefix (DataParallel) is stripped, the file's classifier and keys matching ``ignore``
    (fnmatch patterns) are dropped, and a missing ``num_batches_tracked`` (older torchvision files) is
    tolerated. Anything else that does not fit raises :class:`WeightsMismatchError` listing the
    missing, unexpected and mis-shaped keys. Returns the names that were loaded.
    """
    state = read_state_dict(path)
    head = classifier_prefixes(model)
    kept = {
        key: value
        for key, value in state.items()
        if not any(key.startswith(prefix) for prefix in head) and not any(fnmatch.fnmatch(key, p) for p in ignore)
    }
    own = {key: value for key, value in model.state_dict().items() if not any(key.startswith(p) for p in head)}
    missing = sorted(k for k in own if k not in kept and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in kept if k not in own)
    mis_shaped = sorted(
        f"{k}: file {tuple(kept[k].shape)} vs model {tuple(own[k].shape)}"
        for k in kept
        if k in own and kept[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        def listing(title: str, keys: list[str]) -> str:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
            return f"{len(keys)} {title} [{shown}]"

        raise WeightsMismatchError(
            f"pre-trained weights {str(path)!r} do not fit backbone {type(model).__name__}: "
            + "; ".join(listing(t, k) for t, k in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)) if k)
            + f". The head ({', '.join(head)}) and keys matching {list(ignore)} are dropped before the comparison."
        )
    model.load_state_dict(kept, strict=False)
    return sorted(kept)
