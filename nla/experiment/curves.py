"""An experiment's curves: per protocol, each method's test accuracy (overall and mean over classes) and, under label
noise, what training did with the flipped labels, against the epoch; a line for the mean over the seeds and a band from
the lowest to the highest seed. Every value drawn is read from the runs' ``summary.json``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from matplotlib.figure import Figure  # figures without pyplot: no GUI backend, no global state
from matplotlib.ticker import MaxNLocator

from nla.experiment.spec import Experiment, slug
from nla.experiment.tables import FinishedRun
from nla.records import RunSummary, writing

#: The panels: a summary's figure, its title, and whether it is a share (drawn in %).
ACCURACY_PANELS = (
    ("acc", "test accuracy, overall (%)", True),
    ("mean_acc", "test accuracy, mean over classes (%)", True),
)
NOISE_PANELS = (
    ("memorised", "flipped labels predicted as given: memorised (%)", True),
    ("corrected", "flipped labels predicted as true: corrected (%)", True),
    ("auroc_naw_weight", "AUROC of a low NAW weight for a flipped label", False),
    ("auroc_p_given", "AUROC of a low p(given label) for a flipped label", False),
)


def per_epoch(summary: RunSummary, name: str) -> dict[int, float]:
    """A run's value of ``name`` at each epoch it recorded, by epoch (counted from 1, as nla fit prints them)."""
    if name in ("acc", "mean_acc"):
        return {(r.epoch or 0) + 1: getattr(r, name) for r in summary.epochs}
    return {r.epoch + 1: value for r in summary.label_noise if (value := getattr(r, name)) is not None}


def band(series: Sequence[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, and at each the mean, the lowest and the highest of the runs that recorded it."""
    epochs = sorted({epoch for values in series for epoch in values})
    mean, low, high = [], [], []
    for epoch in epochs:
        present = [values[epoch] for values in series if epoch in values]
        mean.append(math.fsum(present) / len(present))
        low.append(min(present))
        high.append(max(present))
    return epochs, mean, low, high


def protocol_figure(experiment: Experiment, protocol: str, runs: Sequence[FinishedRun]) -> Optional[Figure]:
    """The figure of one protocol's finished runs; ``None`` where none finished. Panels that no run recorded (the
    label-noise ones of a clean protocol, or of runs from an nla without them) are left out."""
    mine = [run for run in runs if run.protocol == protocol]
    if not mine:
        return None
    panels = [
        panel for panel in (*ACCURACY_PANELS, *NOISE_PANELS) if any(per_epoch(run.summary, panel[0]) for run in mine)
    ]
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (name, title, percent) in zip(axes, panels):
        scale = 100 if percent else 1
        for index, method in enumerate(experiment.methods):
            series = [per_epoch(run.summary, name) for run in mine if run.method == method]
            series = [values for values in series if values]
            if not series:
                continue
            epochs, mean, low, high = band(series)
            colour = f"C{index % 10}"
            label = f"{method} ({len(series)} seed{'s' if len(series) > 1 else ''})"
            axis.plot(epochs, [scale * v for v in mean], color=colour, marker=".", label=label)
            if len(series) > 1:
                axis.fill_between(epochs, [scale * v for v in low], [scale * v for v in high], color=colour, alpha=0.2)
        axis.set(xlabel="epoch", title=title)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not percent:
            axis.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(f"{experiment.name}: {protocol} (line: mean over seeds; band: lowest to highest seed)", fontsize=10)
    figure.tight_layout()
    return figure


def draw_curves(experiment: Experiment, runs: Sequence[FinishedRun]) -> list[Path]:
    """One PNG per protocol with finished runs, ``curves-<protocol>.png`` beside the tables; the files written."""
    written = []
    for protocol in experiment.protocols:
        figure = protocol_figure(experiment, protocol, runs)
        if figure is None:
            continue
        path = experiment.root / f"curves-{slug(protocol)}.png"
        with writing(path):
            figure.savefig(path, dpi=100)
        written.append(path)
    return written
