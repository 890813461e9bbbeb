"""An experiment's tables, laid out like the paper's: overall and mean accuracy as mean ± std over seeds, per-class
accuracy, for the last epoch, the best epoch and the mean of the last k (results.md, results.csv)."""

from __future__ import annotations

import csv
import io
import math
import shlex
import typing
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from nla.experiment.attempts import comparable, finished_command, finished_with, runner_record, settings_problem
from nla.experiment.runner import fit_command, read_summary
from nla.experiment.spec import Experiment, ExperimentError
from nla.records import NoiseRecord, RunSummary, write_text_atomic

#: How a run is summed up: its last epoch, its best epoch, the mean of its last k epochs.
SummaryEvaluation = Literal["last", "best", "mean_last"]


EVALUATIONS: tuple[SummaryEvaluation, ...] = typing.get_args(SummaryEvaluation)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def format_cell(values: Sequence[Optional[float]], seeds: int = 1, scale: float = 100, digits: int = 2) -> str:
    """Mean ± std in % (or times another ``scale``), and how many of the ``seeds`` it is over where some did not
    finish."""
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    mean, std = mean_std([scale * v for v in present])
    shown = f"{mean:.{digits}f} ± {std:.{digits}f}" if len(present) > 1 else f"{mean:.{digits}f}"
    return shown + (f" ({len(present)} of {seeds} seeds)" if len(present) < seeds else "")


def evaluation_title(evaluation: str, last_k: int | Sequence[int]) -> str:
    """``last_k``: the epochs a mean of the last k is over, or the counts of the runs it holds (``[2, 5]``: runs
    that ended before k epochs average what they had)."""
    counts = [last_k] if isinstance(last_k, int) else list(last_k) or [5]
    k = counts[0] if len(counts) == 1 else " or ".join(str(count) for count in counts)
    return {"last": "last epoch", "best": "best epoch", "mean_last": f"mean of the last {k} epochs"}[evaluation]


#: The label-noise figures a row carries (:class:`nla.records.NoiseRecord`), of the row's epochs.
NOISE_COLUMNS = NoiseRecord.SHOWN
NOISE_TITLES = {
    "memorised": "memorised",
    "corrected": "corrected",
    "auroc_naw_weight": "AUROC NAW weight",
    "auroc_p_given": "AUROC p(given)",
}


def summary_rows(summary: RunSummary, **identity: Any) -> list[dict[str, Any]]:
    """One row per evaluation (last, best, mean of the last k) of a run's summary, with the label-noise figures of
    the same epochs under ``noise`` (empty for a run without them)."""
    rows = []
    for evaluation in EVALUATIONS:
        record = getattr(summary, evaluation)
        epoch = record.epochs if evaluation == "mean_last" else record.epoch
        rows.append(
            {
                **identity,
                "evaluation": evaluation,
                "epoch": epoch,
                "acc": record.acc,
                "mean_acc": record.mean_acc,
                "class_acc": record.class_acc,
                "noise": summary.noise_over(epoch if isinstance(epoch, list) else [epoch]),
                "last_k": summary.last_k,
            }
        )
    return rows


@dataclass
class FinishedRun:
    """A cell of the grid with its run's summary, its ``runner.json`` (:func:`nla.experiment.runner_record`) and why
    the run is not the one the grid names now (``problem``; ``None`` where it is)."""

    protocol: str
    method: str
    seed: int
    run_dir: Path
    summary: RunSummary
    record: dict[str, Any]
    problem: Optional[str] = None


def finished_runs(experiment: Experiment, fit_args: Optional[Sequence[str]] = None) -> list[FinishedRun]:
    """The grid's cells that hold a finished run, in the grid's order, each checked against the command the grid
    gives it with ``fit_args``, the arguments the command line adds to every fit (``None``: those the runs were
    made with, where they all agree)."""
    runs = []
    for protocol, method, seed in experiment.cells():
        run_dir = experiment.run_dir(protocol, method, seed)
        summary = read_summary(run_dir) if (run_dir / RunSummary.FILENAME).is_file() else None
        if summary is not None and summary.finished:
            runs.append(FinishedRun(protocol, method, seed, run_dir, summary, runner_record(run_dir)))
    if fit_args is None:
        fit_args = shared_fit_args(experiment, runs)
    for run in runs:
        command = fit_command(experiment, run.protocol, run.method, run.seed, fit_args, resume=False)[2:]
        run.problem = settings_problem(run.record, command)
    return runs


def shared_fit_args(experiment: Experiment, runs: Sequence[FinishedRun]) -> list[str]:
    """The arguments the command line added to every run (empty where no run recorded any); runs made with different
    ones stop the tables, which would not know which of them the table is for."""
    found = {tuple(given) for run in runs if (given := fit_args_of(experiment, run)) is not None}
    if len(found) > 1:
        shown = "; ".join(f"`{shlex.join(given) or '(none)'}`" for given in sorted(found))
        raise ExperimentError(
            f"the runs in {experiment.root} were made with different command lines ({shown}): give the arguments the "
            "tables are for after the experiment file, e.g. --data.root /path/to/data"
        )
    return list(found.pop()) if found else []


def fit_args_of(experiment: Experiment, run: FinishedRun) -> Optional[list[str]]:
    """What the command line added to a finished cell's ``nla fit`` (``--data.root``, a CPU-scale config, ...), from
    its ``runner.json``; ``None`` where no runner recorded it, or the command is not the grid's."""
    attempt = finished_with(run.record)
    if attempt is None:
        return None
    own = fit_command(experiment, run.protocol, run.method, run.seed, [], resume=False)[2:]
    command = finished_command(attempt)
    return command[len(own) :] if comparable(command[: len(own)]) == comparable(own) else None


def collect(experiment: Experiment, runs: Optional[list[FinishedRun]] = None) -> list[dict[str, Any]]:
    """One row per finished run (``runs``, else the grid's) and evaluation; runs of other settings than their cell's
    (:attr:`FinishedRun.problem`) are left out."""
    rows = []
    for run in finished_runs(experiment) if runs is None else runs:
        if run.problem:
            continue
        given = fit_args_of(experiment, run)
        rows += summary_rows(
            run.summary,
            method=run.method,
            protocol=run.protocol,
            seed=run.seed,
            wall_s=run.record.get("wall_s"),
            run_dir=str(run.run_dir),
            extra_args=None if given is None else shlex.join(given),
        )
    return rows


def given_on_command_line(rows: list[dict[str, Any]]) -> str:
    """What the runs' command lines added, as the tables' header says it: one set for all, or each with its runs."""
    runs = Counter(r.get("extra_args") for r in rows if r["evaluation"] == "last")
    if not runs:
        return "on the command line: (no run finished)"
    if len(runs) == 1:
        (given,) = runs
        return "on the command line: " + ("(not recorded)" if given is None else f"`{given or '(none)'}`")
    shown = [f"`{g or '(none)'}` ({n} runs)" if g is not None else f"(not recorded: {n} runs)" for g, n in runs.items()]
    return "the runs' command lines differ: " + ", ".join(shown) + " (results.csv: extra_args)"


def markdown_text(text: str) -> str:
    """A name as a table cell shows it: its ``|`` would end the cell."""
    return text.replace("|", "\\|")


def write_tables(
    experiment: Experiment,
    rows: list[dict[str, Any]],
    figures: Sequence[Path] = (),
    stale: Sequence[FinishedRun] = (),
) -> tuple[Path, Path]:
    """``results.csv`` (a row per run and evaluation) and ``results.md`` (the paper's layout), which shows ``figures``,
    files beside it, and lists the ``stale`` runs: finished in a cell with other settings, in no table."""
    root = experiment.root
    root.mkdir(parents=True, exist_ok=True)
    class_names = list(dict.fromkeys(name for r in rows for name in r["class_acc"]))  # every protocol's classes
    averaged = sorted({len(r["epoch"]) for r in rows if r["evaluation"] == "mean_last"})
    csv_path = root / "results.csv"
    with io.StringIO(newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "protocol",
                "seed",
                "evaluation",
                "epoch",
                "acc",
                "mean_acc",
                *class_names,
                *NOISE_COLUMNS,
                "wall_s",
                "run_dir",
                "extra_args",
            ]
        )
        for r in rows:
            classes = ["" if r["class_acc"].get(c) is None else f"{r['class_acc'][c]:.6f}" for c in class_names]
            writer.writerow(
                [
                    r["method"],
                    r["protocol"],
                    r["seed"],
                    r["evaluation"],
                    r["epoch"],
                    f"{r['acc']:.6f}",
                    f"{r['mean_acc']:.6f}",
                    *classes,
                    *["" if r["noise"].get(name) is None else f"{r['noise'][name]:.6f}" for name in NOISE_COLUMNS],
                    f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "",
                    r["run_dir"],
                    "" if r.get("extra_args") is None else r["extra_args"],
                ]
            )

        write_text_atomic(csv_path, handle.getvalue())

    def values(
        method: str, protocol: str, evaluation: str, key: str, name: Optional[str] = None
    ) -> list[Optional[float]]:  # key: acc, mean_acc, or class_acc and noise by name
        chosen = [r for r in rows if (r["method"], r["protocol"], r["evaluation"]) == (method, protocol, evaluation)]
        return [r[key] if name is None else r[key].get(name) for r in chosen]

    seeds = len(experiment.seeds)
    finished = {(r["method"], r["protocol"], r["seed"]) for r in rows}
    listed = len(experiment.cells())
    lines = [f"# {experiment.name}", ""]
    lines += [
        f"Configs: {', '.join(experiment.base)}; seeds {experiment.seeds}; extra arguments: "
        f"`{' '.join(experiment.args) or '(none)'}`; {given_on_command_line(rows)}. "
        f"{len(finished)} of the {listed} cells finished; the tables hold "
        "those only. Accuracy in %, mean ± sample std over the seeds that finished (a cell says when that is fewer "
        "than all). Evaluated on the validation split of each run's config (the test split for RAF-DB and AffectNet, "
        "as FER papers do).",
        "",
    ]
    if stale:
        lines += [
            f"{len(stale)} finished run(s) are in no table: their settings are not those the grid gives the cell now "
            "(move each folder aside, and the grid runs the cell again):",
            "",
            *[f"- {markdown_text(f'{r.method} / {r.protocol} / seed {r.seed}')}: {r.problem}" for r in stale],
            "",
        ]
    if figures:
        lines += [
            "Curves against the epoch, per protocol (line: mean over the seeds; band: lowest to highest seed; every "
            "value from the runs' summary.json): " + ", ".join(f"[{path.name}]({path.name})" for path in figures) + ".",
            "",
            *[f"![{path.stem}]({path.name})" for path in figures],
            "",
        ]
    for evaluation in EVALUATIONS:
        lines += [f"## Overall / mean accuracy, {evaluation_title(evaluation, averaged)}", ""]
        header = ["method"]
        for protocol in experiment.protocols:
            name = markdown_text(protocol)
            header += [f"{name} overall", f"{name} mean"]
            if experiment.paper:
                header += [f"{name} paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in experiment.methods:
            cells = [markdown_text(method)]
            for protocol in experiment.protocols:
                cells += [
                    format_cell(values(method, protocol, evaluation, "acc"), seeds),
                    format_cell(values(method, protocol, evaluation, "mean_acc"), seeds),
                ]
                if experiment.paper:
                    published = experiment.paper.get(method, {}).get(protocol)
                    cells += [" / ".join("—" if v is None else f"{v:.2f}" for v in published) if published else "—"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for protocol in experiment.protocols:
        for evaluation in EVALUATIONS:
            lines += [
                f"## Per-class accuracy, {markdown_text(protocol)}, {evaluation_title(evaluation, averaged)}",
                "",
                "| method | " + " | ".join(class_names) + " |",
                "|" + "---|" * (len(class_names) + 1),
            ]
            for method in experiment.methods:
                lines.append(
                    "| "
                    + " | ".join(
                        [markdown_text(method)]
                        + [
                            format_cell(values(method, protocol, evaluation, "class_acc", c), seeds)
                            for c in class_names
                        ]
                    )
                    + " |"
                )
            lines.append("")
    noisy = [p for p in experiment.protocols if any(r["noise"] for r in rows if r["protocol"] == p)]
    for evaluation in EVALUATIONS if noisy else ():
        lines += [f"## Label noise in training, {evaluation_title(evaluation, averaged)}", ""]
        if evaluation == EVALUATIONS[0]:
            lines += [
                "What the training steps of those epochs did with the labels the protocol flipped: the share of "
                "flipped images predicted as their given, wrong label (memorised) and as their true label "
                "(corrected), in %, and the AUROC of a low NAW weight and of a low probability of the given label as "
                "detectors of a flipped label (0.5: chance).",
                "",
            ]
        header = ["method"] + [f"{markdown_text(p)} {NOISE_TITLES[n]}" for p in noisy for n in NOISE_COLUMNS]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in experiment.methods:
            cells = [markdown_text(method)]
            for protocol in noisy:
                for name in NOISE_COLUMNS:
                    found = values(method, protocol, evaluation, "noise", name)
                    auroc = name.startswith("auroc")
                    cells.append(format_cell(found, seeds, scale=1 if auroc else 100, digits=3 if auroc else 2))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    times = [r["wall_s"] for r in rows if r["evaluation"] == "last" and r["wall_s"] is not None]
    if times:
        lines += [f"Wall time per run: {min(times) / 60:.1f}-{max(times) / 60:.1f} min ({len(times)} runs).", ""]
    markdown_path = root / "results.md"
    write_text_atomic(markdown_path, "\n".join(lines))
    return markdown_path, csv_path
