"""Callbacks of a run: what it writes into its directory (:mod:`~nla.callbacks.run`), prints
(:mod:`~nla.callbacks.console`), predicts (:mod:`~nla.callbacks.predictions`) and draws of NAW
(:mod:`~nla.callbacks.diagnostics`). Configs name them as ``nla.callbacks.<Class>``."""

from nla.callbacks.console import ProgressBar, RunReport
from nla.callbacks.diagnostics import NAWDiagnostics, SampleRecord
from nla.callbacks.predictions import PredictionWriter
from nla.callbacks.run import AccuracySummary, RunCheckpoint, RunConfigSaver, environment, machine

__all__ = [
    "AccuracySummary",
    "NAWDiagnostics",
    "PredictionWriter",
    "ProgressBar",
    "RunCheckpoint",
    "RunConfigSaver",
    "RunReport",
    "SampleRecord",
    "environment",
    "machine",
]
