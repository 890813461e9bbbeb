"""Settings as plain data: a command's parsed config flattened to ``{"model.criterion.lam": 0.5}`` and compared,
and the class a ``class_path`` names. Shared by the run-directory rules and the command line."""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

from jsonargparse import Namespace


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
