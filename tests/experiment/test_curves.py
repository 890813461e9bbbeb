"""A grid's curves (nla/experiment/curves.py): each value drawn is one of the runs' summary.json values (the band's
edges) or their mean (the line); the label-noise panels appear where runs recorded them, and runs of an nla without
them still draw the accuracy they share."""

import numpy as np
import pytest

from nla.cli import main
from nla.experiment import Experiment, finished_runs
from nla.experiment.curves import protocol_figure
from nla.records import Evaluation, NoiseRecord, RunSummary
from tests.helpers import finish_by_hand


def evaluation(epoch: int, right: int) -> Evaluation:
    """An epoch whose overall accuracy is right/4 (two classes, two images each)."""
    a = min(right, 2)
    return Evaluation.from_confusion([[a, 2 - a], [2 - (right - a), right - a]], ["a", "b"], epoch=epoch)


def noise(epoch: int, memorised: float) -> NoiseRecord:
    return NoiseRecord(epoch, 10, 3, memorised, 0.1, 0.9, 0.6, 0.8, 0.2, 0.3)


def grid(tmp_path) -> Experiment:
    config = tmp_path / "grid.yaml"
    config.write_text(
        f"name: curves\nbase: []\nmethods: {{CE: [], NLA: []}}\nprotocols: {{clean: [], noisy: []}}\n"
        f"seeds: [0, 1]\noutput_dir: {tmp_path / 'out'}\n"
    )
    experiment = Experiment.load(config)
    rights = {("noisy", "CE", 0): [1, 3, 2], ("noisy", "CE", 1): [2, 4, 3], ("noisy", "NLA", 0): [2, 2, 4]}
    for (protocol, method, seed), right in rights.items():
        history = [evaluation(epoch, r) for epoch, r in enumerate(right)]
        label_noise = [noise(epoch, 0.2 * (epoch + 1) + 0.1 * seed) for epoch in range(3)]
        # seed 1 of CE from an nla that recorded no label noise
        summary = RunSummary(history, label_noise=label_noise if seed == 0 else [])
        finish_by_hand(experiment, protocol, method, seed, summary=summary)
    finish_by_hand(experiment, "clean", "CE", 0, summary=RunSummary([evaluation(0, 4)]))
    return experiment


def lines_of(axis) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}


def test_lines_are_the_seeds_mean_and_bands_their_extremes(tmp_path):
    experiment = grid(tmp_path)
    figure = protocol_figure(experiment, "noisy", finished_runs(experiment))
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert len(titles) == 6 and titles[0].startswith("test accuracy, overall") and "memorised" in titles[2]
    overall = lines_of(figure.axes[0])
    assert overall["CE (2 seeds)"] == ([1, 2, 3], pytest.approx([37.5, 87.5, 62.5]))  # (25+50)/2, (75+100)/2, ...
    assert overall["NLA (1 seed)"] == ([1, 2, 3], pytest.approx([50, 50, 100]))
    (ce_band, *_) = figure.axes[0].collections  # CE's band; NLA has one seed and no band
    edges = np.asarray(ce_band.get_paths()[0].vertices)[:, 1]
    assert set(np.round(edges, 6)) <= {25.0, 50.0, 75.0, 100.0}  # runs' own values, none in between
    memorised = lines_of(figure.axes[2])
    assert memorised["CE (1 seed)"] == ([1, 2, 3], pytest.approx([20, 40, 60]))  # only seed 0 recorded it


def test_a_protocol_without_label_noise_draws_accuracy_alone(tmp_path):
    experiment = grid(tmp_path)
    figure = protocol_figure(experiment, "clean", finished_runs(experiment))
    assert [axis.get_title() for axis in figure.axes if axis.get_visible()][2:] == []
    assert protocol_figure(experiment, "elsewhere", finished_runs(experiment)) is None


def test_tables_only_draws_the_curves_and_results_md_shows_them(tmp_path, capsys):
    experiment = grid(tmp_path)
    main(["experiment", str(tmp_path / "grid.yaml"), "--tables_only"])
    root = experiment.root
    assert (root / "curves-clean.png").stat().st_size > 5000 and (root / "curves-noisy.png").stat().st_size > 5000
    markdown = (root / "results.md").read_text()
    assert "![curves-noisy](curves-noisy.png)" in markdown and "[curves-clean.png](curves-clean.png)" in markdown
    assert "## Label noise in training, last epoch" in markdown
    assert "| CE | 60.00 (1 of 2 seeds) |" in markdown  # the memorised share of the one run that recorded it
