"""Creating a timm backbone and loading pre-trained weights from a user's file."""

from __future__ import annotations

import fnmatch
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from nla.errors import ConfigError, UserError
from nla.rundir import missing_file

log = logging.getLogger(__name__)

# Keys that the MS-Celeb-1M and IJB-A ResNet-18 checkpoints shared in FER carry beyond the backbone:
# the old classifier is dropped by name (see ``classifier_prefixes``); ``feature.*`` is the IJB-A
# embedding layer that sits between the pooled features and its 87,020-way classifier.
DEFAULT_IGNORED_KEYS: tuple[str, ...] = ("feature.*",)
# Where NLAModule keeps its backbone, so that an nla checkpoint's state dict names it ``model.conv1.weight``, ...
NLA_BACKBONE_PREFIX = "model."


class WeightsMismatchError(UserError, RuntimeError):
    """A weights file whose keys or shapes do not fit the backbone, or that is not what it should be."""


def create_backbone(name: str = "resnet18", num_classes: int = 7, **model_args: Any) -> nn.Module:
    """A randomly initialised timm model with a ``num_classes``-way head; ``model_args`` go to ``timm.create_model``.

    Pre-trained weights come from :func:`nla.backbones.starts.start_backbone`.
    """
    require_timm_model(name)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **model_args)
    except TypeError as error:  # an argument the model does not take
        raise ConfigError(f"--model.backbone_args {model_args}: {name} does not take them ({error})") from None


def require_timm_model(name: str) -> None:
    if not timm.is_model(name):
        raise ConfigError(f"backbone {name!r} is not a timm model; see timm.list_models(), e.g. 'resnet18'")


def classifier_prefixes(model: nn.Module) -> list[str]:
    """The state-dict prefixes of the model's classification head, e.g. ``["fc."]`` for a ResNet."""
    config: Any = getattr(model, "pretrained_cfg", None) or {}
    names = config.get("classifier", "fc")
    names = [names] if isinstance(names, str) else list(names)
    return [f"{name}." for name in names]


class UnsafeWeightsError(WeightsMismatchError):
    """A weights file that holds pickled Python objects, which would run code when loaded."""


def require_torch_file(path: str | Path, what: str = "weights file") -> Path:
    """``path``, if it is a file ``torch.load`` could read (a zip archive or a pickle); else one line."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path, what)
    with open(path, "rb") as handle:
        start = handle.read(2)
    if not zipfile.is_zipfile(path) and start[:1] != b"\x80":  # torch.save writes a zip; older files a pickle
        raise WeightsMismatchError(
            f"{what} {str(path)!r} cannot be read as a PyTorch file: it is neither a zip archive nor a pickle"
        )
    return path


def load_trusted(path: str | Path, trust: bool = False, what: str = "weights file") -> Any:
    """``torch.load`` a file of tensors on the CPU without unpickling arbitrary objects.

    A file that holds other Python objects is refused with :class:`UnsafeWeightsError` unless ``trust``;
    a file that is no PyTorch file at all raises :class:`WeightsMismatchError`. Both say so in one line.
    """
    path = require_torch_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            reason = f"such as {found.group(1)}" if found else "that torch will not load as plain data"
            raise UnsafeWeightsError(
                f"{what} {str(path)!r} holds pickled Python objects besides tensors ({reason}); loading it would run "
                "whatever code it contains, so it is refused. If you trust where it came from, pass "
                "--model.trust_pretrained_weights true"
            ) from None
        log.warning("%s holds pickled Python objects; loading it because it is trusted", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsMismatchError(f"{what} {str(path)!r} cannot be read as a PyTorch file: {first}") from None


def read_state_dict(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a plain state dict, a dict holding ``'state_dict'`` (or ``'model'``), or
    an nla checkpoint, whose backbone sits under ``model.``."""
    checkpoint = load_trusted(path, trust, "pre-trained weights file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsMismatchError(
            f"{path} is not a state dict: expected a mapping of names to tensors, or a dict with 'state_dict'"
        )
    state = {key.removeprefix("module."): value for key, value in checkpoint.items()}
    if any(key.startswith(NLA_BACKBONE_PREFIX) for key in state):  # an nla checkpoint: keep the backbone only
        state = {
            key.removeprefix(NLA_BACKBONE_PREFIX): v for key, v in state.items() if key.startswith(NLA_BACKBONE_PREFIX)
        }
    return state


def state_dict_mismatch(report: str) -> str:
    """torch's report of a state dict that does not fit (a line per tensor) in a few words: how many tensors are
    missing, unexpected or of another shape, with the first of each."""
    lines = [line.strip() for line in report.splitlines()[1:] if line.strip()]
    parts = []
    for prefix, what in (("Missing key(s)", "missing"), ("Unexpected key(s)", "unexpected")):
        for line in lines:
            if line.startswith(prefix):
                keys = re.findall(r'"([^"]+)"', line)
                parts.append(f"{len(keys)} {what} ({keys[0] if keys else '?'}{', ...' if len(keys) > 1 else ''})")
    shapes = [line for line in lines if line.startswith("size mismatch for ")]
    if shapes:
        found = re.match(
            r"size mismatch for ([^:]+): .*?torch\.Size\((\[[^]]*\])\).*?torch\.Size\((\[[^]]*\])\)", shapes[0]
        )
        first = f"{found.group(1)}: {found.group(2)} in the file, {found.group(3)} in the model" if found else shapes[0]
        parts.append(f"{len(shapes)} of another shape ({first}{', ...' if len(shapes) > 1 else ''})")
    return "; ".join(parts) or (lines[0] if lines else report.splitlines()[0])


def load_pretrained_weights(
    model: nn.Module, path: str | Path, ignore: Sequence[str] = DEFAULT_IGNORED_KEYS, trust: bool = False
) -> list[str]:
    """Load a backbone's weights into ``model`` from ``path``, keeping the model's own head.

    A ``module.`` prefix (DataParallel) is stripped, an nla checkpoint's backbone is taken from under
    ``model.``, the file's classifier and keys matching ``ignore`` (fnmatch patterns) are dropped, and a
    missing ``num_batches_tracked`` (older torchvision files) is tolerated. Anything else that does not fit
    raises :class:`WeightsMismatchError` listing the missing, unexpected and mis-shaped keys. A file that
    holds pickled objects besides tensors is refused unless ``trust``. Returns the names that were loaded.
    """
    state = read_state_dict(path, trust)
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
            + "; ".join(
                listing(t, k)
                for t, k in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
                if k
            )
            + f". The head ({', '.join(head)}) and keys matching {list(ignore)} are dropped before the comparison."
        )
    model.load_state_dict(kept, strict=False)
    return sorted(kept)
