"""nla: facial expression recognition that stays accurate under noisy labels and imbalanced classes.

Implements NLA (Navigating Label Ambiguity, AAAI 2025) and the baselines it is measured against.
"""

from nla.module import NLAModule

__version__ = "0.1.0"
__all__ = ["NLAModule", "__version__"]
