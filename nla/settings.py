"""Settings as plain data: a command's parsed config flattened to ``{"model.criterion.lam": 0.5}`` and compared,
and the class a ``class_path`` names. Shared by the run-directory rules and the command line."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from typing import Any

from jsonargparse import Namespace

#: The keys LightningCLI adds to the hyperparameters a checkpoint saves of a model or DataModule it made: the class
#: (``_class_path``) and how it was made (``_instantiator``); tests/cli/test_seams.py fails if Lightning renames them.
CLASS_PATH_KEY = "_class_path"
LIGHTNING_CLI_KEYS = (CLASS_PATH_KEY, "_instantiator")


def import_class(class_path: str) -> Any:
    """The object ``package.module.Name`` names."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def plain(value: Any) -> Any:
    """A jsonargparse namespace (or a dataclass) as plain dicts and lists."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"model.criterion.lam": 0.5, ...}``."""
    value = plain(value)
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key, inner in value.items():
            found.update(leaves(inner, f"{prefix}{key}."))
        return found
    return {prefix[:-1]: value}


def same(a: Any, b: Any) -> bool:
    """Equal settings: lists element by element, numbers to a relative 1e-9 (YAML and Python floats)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


def expand_home(value: Any) -> Any:
    """Every setting that names a place under a home folder (``~/runs``, ``~user/data``), expanded: once, where a
    command's settings are parsed, so that a run, its lock, its loggers and the files it reads agree on one folder.
    No other setting begins with ``~``. Namespaces are changed in place; the value is returned."""
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if isinstance(value, Namespace):
        for key, inner in value.items():
            value[key] = expand_home(inner)
        return value
    if isinstance(value, list):
        return [expand_home(inner) for inner in value]
    if isinstance(value, dict):
        return {key: expand_home(inner) for key, inner in value.items()}
    return value
