"""What a fit prints: the progress bar draws only the batches it is due to (the others cost a clock read), and the
closing lines print with the bar on."""

import itertools

import pytest

from nla.callbacks import console
from nla.callbacks.console import ProgressBar
from nla.cli import run_cli
from tests.conftest import TINY, fit_args

BAR_ON = [*TINY, "--trainer.enable_progress_bar", "true"]


def drawn_batches(monkeypatch) -> list[tuple[int, int]]:
    """Records (epoch, batch) of every training-bar redraw, which is when the bar reads the metrics."""
    drawn: list[tuple[int, int]] = []
    original = ProgressBar.get_metrics

    def get_metrics(self, trainer, pl_module):
        if trainer.training:
            drawn.append((trainer.current_epoch, self.train_progress_bar.n))
        return original(self, trainer, pl_module)

    monkeypatch.setattr(ProgressBar, "get_metrics", get_metrics)
    return drawn


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seconds_per_reading", "expected"), [(0.0, [6]), (0.3, [2, 4, 6]), (10.0, [1, 2, 3, 4, 5, 6])]
)
def test_the_bar_reads_the_metrics_only_on_the_batches_it_draws(
    rafdb_root, tmp_path, monkeypatch, seconds_per_reading, expected
):
    ticks = itertools.count()  # the clock advances this much each time the bar reads it
    monkeypatch.setattr(console, "monotonic", lambda: seconds_per_reading * next(ticks))
    drawn = drawn_batches(monkeypatch)
    settings = [*BAR_ON, "--trainer.limit_val_batches", "0"]
    run_cli(fit_args(rafdb_root, tmp_path / "run", *settings, epochs=2, figures=True))  # with nla.callbacks.ProgressBar
    per_epoch = [sorted({n for e, n in drawn if e == epoch}) for epoch in (0, 1)]
    assert per_epoch == [expected, expected], drawn  # 6 batches an epoch; the last one is always drawn


def test_a_batch_count_redraws_every_that_many_batches_and_bad_settings_are_refused():
    bar = ProgressBar(refresh_rate=4)

    class Bar:
        disable, total = False, 10

    assert [n for n in range(1, 11) if bar._due(Bar, n)] == [4, 8, 10]
    with pytest.raises(ValueError, match="refresh_rate must be at least 1"):
        ProgressBar(refresh_rate=0)
    with pytest.raises(ValueError, match="refresh_seconds must be 0 or more"):
        ProgressBar(refresh_seconds=-1)


@pytest.mark.slow
def test_the_closing_lines_print_with_the_bar_on(rafdb_root, tmp_path, capsys):
    run_cli(fit_args(rafdb_root, tmp_path / "run", *BAR_ON, epochs=1, figures=True))
    out = capsys.readouterr().out
    assert "epoch 1/1  train loss" in out
    assert "done: last epoch acc" in out
    assert f"run directory: {tmp_path / 'run'}   test it: nla test --ckpt_path " in out
