"""nla: facial expression recognition that stays accurate under noisy labels and imbalanced classes.

Implements NLA (Navigating Label Ambiguity, AAAI 2025) and the baselines it is measured against.
:class:`NLAModule`, :class:`Criterion` and :class:`CriterionConfig` are imported on first use, so that the ``nla``
command can answer ``--help`` without loading PyTorch.
"""

import os
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# nla works offline: albumentations would otherwise ask the internet for a newer version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

try:
    __version__ = version("nla")  # the one place the version is written is pyproject.toml
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_LAZY = {"Criterion": "nla.criterion", "CriterionConfig": "nla.criterion", "NLAModule": "nla.module"}

if TYPE_CHECKING:
    from nla.criterion import Criterion, CriterionConfig
    from nla.module import NLAModule


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nla' has no attribute {name!r}")


__all__ = ["Criterion", "CriterionConfig", "NLAModule", "__version__"]
