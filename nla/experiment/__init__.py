"""``nla experiment``: the paper's tables as one command.

An experiment file names a grid of methods x protocols x seeds, each a stack of config overlays::

    name: table5_rafdb
    base: [configs/rafdb.yaml]
    methods:
      CE: [configs/methods/ce.yaml]
      NLA: [configs/methods/nla.yaml]
    protocols:
      clean: []
      noise 30%: [configs/noise/30.yaml]
    seeds: [0, 1, 2]
    paper:                       # optional published numbers, shown beside ours: [overall, mean]
      NLA: {clean: [89.93, 83.87]}

Every cell is one ``nla fit`` process in ``<output_dir>/<protocol>/<method>/seed<k>``; ``--jobs N`` runs N
of them at once. A finished cell (it has ``summary.json``) is skipped, so a grid cut short (a machine
taken back) goes on where it stopped; an interrupted cell resumes from its ``last.ckpt``, and one that
died before its first checkpoint is moved aside, never deleted (its time still counts). SIGTERM or Ctrl-C to
the runner stops the runs it started; each cell's ``runner.json`` records every attempt and its wall time. The
tables (``results.md``, ``results.csv``) give overall and mean accuracy as mean ± std over seeds, and per-class
accuracy, for the last epoch, the best epoch and the mean of the last k; under label noise, what training did with the
flipped labels over the same epochs. Beside them, ``curves-<protocol>.png`` draws every epoch (:mod:`.curves`).

    nla experiment configs/experiments/table5_rafdb.yaml --data.root /path/to/RAF-DB
"""

from nla.experiment.runner import fit_command, run_grid, runner_record
from nla.experiment.spec import Experiment, ExperimentError, slug
from nla.experiment.tables import (
    EVALUATIONS,
    FinishedRun,
    SummaryEvaluation,
    collect,
    evaluation_title,
    finished_runs,
    summary_rows,
    write_tables,
)

__all__ = [
    "EVALUATIONS",
    "Experiment",
    "ExperimentError",
    "FinishedRun",
    "SummaryEvaluation",
    "collect",
    "evaluation_title",
    "finished_runs",
    "fit_command",
    "run_grid",
    "runner_record",
    "slug",
    "summary_rows",
    "write_tables",
]
