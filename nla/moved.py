"""The class paths of nla 0.2 that configs, checkpoints and grids' records may still name, and where the classes are
now. Nothing here imports anything: the command line reads it before PyTorch is loaded."""

from __future__ import annotations

import re

#: Classes of nla 0.2 that configs name by class path, and where they are now.
MOVED_CLASSES = {
    "nla.console.RunReport": "nla.callbacks.RunReport",
    "nla.console.ProgressBar": "nla.callbacks.ProgressBar",
    "nla.diagnostics.NAWDiagnostics": "nla.callbacks.NAWDiagnostics",
    "nla.diagnostics.SampleRecord": "nla.callbacks.SampleRecord",
    "nla.predictions.PredictionWriter": "nla.callbacks.PredictionWriter",
}

_MOVED = re.compile("(?:" + "|".join(re.escape(path) for path in MOVED_CLASSES) + r")(?![\w.])")


def current_class_paths(text: str) -> str:
    """``text`` (an argument, a line of a config) with every moved class path written as it is now."""
    return _MOVED.sub(lambda found: MOVED_CLASSES[found.group(0)], text)
