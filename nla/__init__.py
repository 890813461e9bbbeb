"""nla: facial expression recognition that stays accurate under noisy labels and imbalanced classes.

Implements NLA (Navigating Label Ambiguity, AAAI 2025) and the baselines it is measured against.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# nla works offline: albumentations would otherwise ask the internet for a newer version at every import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from nla.criterion import Criterion, CriterionConfig
from nla.module import NLAModule

try:
    __version__ = version("nla")  # the one place the version is written is pyproject.toml
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["Criterion", "CriterionConfig", "NLAModule", "__version__"]
