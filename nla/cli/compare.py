"""``nla compare RUN_DIR ...``: the runs' last epoch, best epoch and mean of the last k side by side.

Each run directory's ``summary.json`` gives overall, mean and per-class accuracy; the table is printed as
markdown, or as CSV with ``--csv``. Classes are matched by name across datasets (``Surprise`` and ``surprise``,
``happy`` and ``happiness``); a class with no image in a run's validation split is blank. Epochs count from 1, as
``nla fit`` prints them. Runs validated on different data are said to be so. Runs under label noise add what their
training did with the flipped labels (memorised, corrected, in %) and how well NAW's weight and the probability of the
given label detect them (AUROC), over the same epochs.

    nla compare runs/rafdb-ce runs/rafdb
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from jsonargparse import ArgumentParser, Namespace

from nla.class_names import canonical
from nla.experiment.tables import EVALUATIONS, NOISE_COLUMNS, SummaryEvaluation, evaluation_title, summary_rows
from nla.records import RunSummary


def rows_of(run_dirs: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        summary_file = path / RunSummary.FILENAME if path.is_dir() else path
        if not summary_file.is_file():
            raise FileNotFoundError(f"{run_dir}: no {RunSummary.FILENAME} (a run writes it when its fit ends)")
        summary = RunSummary.read(summary_file)  # a file that is not a summary: ValueError naming it
        if not summary.epochs:
            raise FileNotFoundError(f"{summary_file}: records no validated epoch")
        shown = str(path) if summary.finished else f"{path} (stopped after epoch {(summary.last.epoch or 0) + 1})"
        rows += summary_rows(summary, run=shown, validated_on=validated_on(summary))
    return rows


def percent(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One column per class, matched by name across the runs (shown as the first run spells it), then the label-noise
    figures of the training epochs (in %; AUROC as a fraction) where a run has them."""
    columns: dict[str, str] = {}
    for row in rows:
        for name in row["class_acc"]:
            columns.setdefault(canonical(name), name)
    noise = [name for name in NOISE_COLUMNS if any(row["noise"].get(name) is not None for row in rows)]
    header = ["run", "evaluation", "epoch", "acc", "mean_acc", *columns.values(), *noise]
    body = []
    for row in rows:
        epoch = row["epoch"]  # nla fit counts epochs from 1; the summary from 0
        epoch_text = f"{epoch[0] + 1}-{epoch[-1] + 1}" if isinstance(epoch, list) else str(epoch + 1)
        by_class = {canonical(name): value for name, value in row["class_acc"].items()}
        body.append(
            [
                row["run"],
                evaluation_title(row["evaluation"], row["last_k"]),
                epoch_text,
                percent(row["acc"]),
                percent(row["mean_acc"]),
                *[percent(by_class.get(key)) for key in columns],
                *[noise_figure(name, row["noise"].get(name)) for name in noise],
            ]
        )
    return header, body


def noise_figure(name: str, value: Optional[float]) -> str:
    """A label-noise figure as a table shows it: a share in %, an AUROC as it is."""
    if value is None:
        return ""
    return f"{value:.3f}" if name.startswith("auroc") else percent(value)


def validated_on(summary: RunSummary) -> tuple[Any, ...]:
    """What a run's accuracies were measured on: the data, its split and its number of images."""
    validation = summary.validation
    return (validation.get("data"), validation.get("split"), validation.get("images"))


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell or "—" for cell in row) + " |" for row in body]
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nla compare", description=__doc__, exit_on_error=False)
    parser.add_argument("runs", nargs="+", help="run directories (or their summary.json)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of a markdown table")
    parser.add_argument(
        "--evaluations",
        type=list[SummaryEvaluation],
        default=list(EVALUATIONS),
        help="which of last, best, mean_last to show",
    )
    return parser


def run(config: Namespace) -> None:
    try:
        if not config.evaluations:
            raise ValueError(f"--evaluations is empty: name some of {list(EVALUATIONS)}")
        folders = [(Path(run).parent if Path(run).is_file() else Path(run)).resolve() for run in config.runs]
        twice = sorted({run for run, folder in zip(config.runs, folders) if folders.count(folder) > 1})
        if twice:
            raise ValueError(f"{twice} given twice: each run is a row once")
        rows = [r for r in rows_of(list(config.runs)) if r["evaluation"] in config.evaluations]
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"nla compare: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    seen: dict[tuple[Any, ...], str] = {}
    for row in rows:
        seen.setdefault(row["validated_on"], row["run"])
    if len(seen) > 1:
        shown = "; ".join(f"{run}: {' '.join(str(v) for v in on if v is not None)}" for on, run in seen.items())
        print(f"nla compare: warning: these runs were validated on different data ({shown})", file=sys.stderr)
    header, body = table(rows)
    if config.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(body)
        print(buffer.getvalue(), end="")
    else:
        print(markdown(header, body))


def main(argv: Sequence[str]) -> None:
    run(build_parser().parse_args(list(argv[1:])))
