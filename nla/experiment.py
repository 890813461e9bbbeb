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
accuracy, for the last epoch, the best epoch and the mean of the last k.

    nla experiment configs/experiments/table5_rafdb.yaml --data.root /path/to/RAF-DB
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Optional

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.utilities.exceptions import SIGTERMException

from nla.callbacks import free_path
from nla.errors import UserError, check_seed, read_yaml
from nla.results import RunSummary

HELP = "Run a grid of methods x protocols x seeds (the paper's tables) and write its tables"
#: How a run is summed up: its last epoch, its best epoch, the mean of its last k epochs.
SummaryEvaluation = Literal["last", "best", "mean_last"]
EVALUATIONS: tuple[SummaryEvaluation, ...] = typing.get_args(SummaryEvaluation)


class ExperimentError(UserError, ValueError):
    """A malformed experiment file."""


@dataclass
class Experiment:
    name: str
    base: list[str]
    methods: dict[str, list[str]]
    protocols: dict[str, list[str]] = field(default_factory=lambda: {"clean": []})
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: Optional[str] = None
    args: list[str] = field(default_factory=list)
    paper: dict[str, dict[str, list[Optional[float]]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        path = Path(path)
        if not path.is_file():
            raise ExperimentError(f"experiment file {str(path)!r} does not exist")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ExperimentError(f"{path}: expected a mapping of name, base, methods, ...; got {type(raw).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ExperimentError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        for key in ("name", "base", "methods"):
            if key not in raw:
                raise ExperimentError(f"{path}: missing key {key!r}")
        for key in ("methods", "protocols"):  # `clean:` with nothing after it is an empty list of overlays
            if isinstance(raw.get(key), dict):
                raw[key] = {label: [] if overlays is None else overlays for label, overlays in raw[key].items()}
        hints = typing.get_type_hints(cls)
        for key, value in raw.items():
            if not _conforms(value, hints[key]):
                shown = str(hints[key]).replace("typing.", "")
                raise ExperimentError(f"{path}: {key} is {value!r}; expected {shown}")
        experiment = cls(**raw)
        for label, overlays in [("base", experiment.base), *experiment.methods.items(), *experiment.protocols.items()]:
            for overlay in overlays or []:
                if not Path(overlay).is_file():
                    raise ExperimentError(f"{path}: {label!r} names config {overlay!r}, which does not exist")
        return experiment

    @property
    def root(self) -> Path:
        return Path(self.output_dir or f"runs/experiments/{self.name}")

    def cells(self) -> list[tuple[str, str, int]]:
        return [(p, m, s) for p in self.protocols for m in self.methods for s in self.seeds]

    def run_dir(self, protocol: str, method: str, seed: int) -> Path:
        return self.root / slug(protocol) / slug(method) / f"seed{seed}"


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML has the type ``hint`` (str, int, float, None, list, dict, Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_conforms(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label.replace("+", "plus").replace("%", "pct")).strip("-").lower()


# --- running --------------------------------------------------------------------------------------


def cell_state(run_dir: Path) -> str:
    if (run_dir / RunSummary.FILENAME).is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    if run_dir.exists():
        return "stale"
    return "new"


def fit_command(
    experiment: Experiment, protocol: str, method: str, seed: int, extra: Sequence[str], resume: bool
) -> list[str]:
    configs = [*experiment.base, *experiment.methods[method], *(experiment.protocols[protocol] or [])]
    command = [sys.executable, "-m", "nla", "fit"]
    for config in configs:
        command += ["--config", config]
    command += [
        "--seed_everything",
        str(seed),
        "--trainer.default_root_dir",
        str(experiment.run_dir(protocol, method, seed)),
    ]
    command += [*experiment.args, *extra]
    return command + (["--ckpt_path", "last"] if resume else [])


@dataclass
class Cell:
    label: str
    run_dir: Path
    command: list[str]
    process: Optional[subprocess.Popen] = None
    log: Optional[IO[str]] = None
    started: float = 0.0


def run_grid(experiment: Experiment, extra: Sequence[str], dry_run: bool = False, jobs: int = 1) -> list[str]:
    """Run every unfinished cell, ``jobs`` at a time, each in its own process; returns the cells that failed."""
    pending: list[Cell] = []
    for protocol, method, seed in experiment.cells():
        run_dir = experiment.run_dir(protocol, method, seed)
        state = cell_state(run_dir)
        label = f"{method} / {protocol} / seed {seed}"
        if state == "done":
            print(f"[done]    {label}: {run_dir}")
            continue
        if state == "stale":
            aside = free_path(run_dir.with_name(run_dir.name + ".incomplete"))
            print(f"[stale]   {label}: no checkpoint in {run_dir}; moved aside to {aside.name}")
            if not dry_run:
                run_dir.rename(aside)
                carry_attempts(aside, run_dir)
        command = fit_command(experiment, protocol, method, seed, extra, resume=state == "resume")
        print(f"[{'resume' if state == 'resume' else 'run':<7}] {label}: {' '.join(command[2:])}")
        pending.append(Cell(label, run_dir, command))
    if dry_run:
        return []
    failed: list[str] = []
    running: list[Cell] = []
    succeeded, start_errors = False, []  # the errors of the runs that failed before their first checkpoint
    shared_error: Optional[str] = None
    try:
        while pending or running:
            while pending and len(running) < jobs:
                running.append(start(pending.pop(0)))
            time.sleep(0.2)
            for cell in [c for c in running if c.process is not None and c.process.poll() is not None]:
                running.remove(cell)
                error = finish(cell, failed)
                succeeded = succeeded or cell.label not in failed
                if cell.label in failed and not (cell.run_dir / "checkpoints" / "last.ckpt").is_file():
                    start_errors.append((error or "").replace(str(cell.run_dir), "<run>"))
            if not succeeded and len(start_errors) >= 2 and len(set(start_errors)) == 1 and start_errors[0]:
                shared_error, pending = start_errors[0], []  # what the cells share is wrong; the rest would fail alike
    except BaseException:  # SIGTERM, Ctrl-C: the runs still going stop too, and their time so far is recorded
        stop(running)
        for cell in running:
            finish(cell, failed, interrupted=True)
        raise
    if shared_error:
        raise ExperimentError(
            f"stopped: the first {len(start_errors)} runs failed at their start with the same error, and the others "
            f"would too ({shared_error}); fix it and run the same command again"
        )
    return failed


RUNNER_FILE = "runner.json"


def runner_record(run_dir: Path) -> dict[str, Any]:
    """A cell's ``runner.json``: its attempts (command, start, wall time, exit code) and their total wall time.

    An attempt is written when it starts, so one whose runner died without a word (a machine taken back) is still
    there; it is closed at the last time anything in the run's folder was written, and marked interrupted."""
    path = run_dir / RUNNER_FILE
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"attempts": []}
    for attempt in record["attempts"]:
        if attempt.get("wall_s") is None:
            writes = [p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file() and p.name != RUNNER_FILE]
            attempt["wall_s"] = max([0.0, *(t - attempt["started"] for t in writes)])
            attempt["interrupted"] = True
    record["wall_s"] = total_wall_s(record["attempts"])
    return record


def total_wall_s(attempts: list[dict[str, Any]]) -> Optional[float]:
    """The attempts' wall time together (an attempt still running counts 0); ``None`` when there is none."""
    return math.fsum(attempt["wall_s"] or 0.0 for attempt in attempts) if attempts else None


def write_runner_record(run_dir: Path, record: dict[str, Any]) -> None:
    record["wall_s"] = total_wall_s(record["attempts"])
    (run_dir / RUNNER_FILE).write_text(json.dumps(record, indent=2))


def carry_attempts(aside: Path, run_dir: Path) -> None:
    """A cell moved aside keeps its files; its attempts, time spent on the cell though they left no checkpoint,
    go on counting in the new folder's ``runner.json``, each naming the folder it was moved to."""
    record = runner_record(aside)
    if record["attempts"]:
        for attempt in record["attempts"]:
            attempt.setdefault("moved_aside_to", aside.name)
        run_dir.mkdir(parents=True)
        write_runner_record(run_dir, record)


def start(cell: Cell) -> Cell:
    """Start a cell's ``nla fit`` and record the attempt at once, before anything can kill the runner."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    record = runner_record(cell.run_dir)
    cell.log = open(cell.run_dir / "fit.log", "a")  # noqa: SIM115  (closed when the cell ends)
    cell.started = time.time()
    cell.process = subprocess.Popen(cell.command, stdout=cell.log, stderr=subprocess.STDOUT)
    record["attempts"].append({"command": cell.command[2:], "started": cell.started, "wall_s": None, "exit_code": None})
    write_runner_record(cell.run_dir, record)
    return cell


def stop(cells: Sequence[Cell], grace_s: float = 60.0) -> None:
    """Stop running cells as a scheduler would: SIGTERM to all (nla fit keeps its checkpoints), then SIGKILL to
    those still running after ``grace_s``."""
    processes = [cell.process for cell in cells if cell.process is not None]
    for process in processes:
        process.terminate()
    deadline = time.time() + grace_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def finish(cell: Cell, failed: list[str], interrupted: bool = False) -> Optional[str]:
    """Close a cell's attempt in its ``runner.json`` with its wall time and exit code; a failed run's one-line
    error, if its log ends with one."""
    assert cell.process is not None and cell.log is not None
    cell.log.close()
    code, wall = cell.process.returncode, time.time() - cell.started
    record = runner_record(cell.run_dir)
    attempt = next(a for a in reversed(record["attempts"]) if a.get("started") == cell.started)
    attempt.update(wall_s=wall, exit_code=code, interrupted=interrupted)
    write_runner_record(cell.run_dir, record)
    if interrupted:
        print(f"[stopped] {cell.label} after {wall / 60:.1f} min; the same command resumes it")
    elif code != 0 or not (cell.run_dir / RunSummary.FILENAME).is_file():
        failed.append(cell.label)
        error = last_error(cell.run_dir / "fit.log")
        print(f"[failed]  {cell.label}: {error or f'exit code {code}'}; see {cell.run_dir / 'fit.log'}")
        return error
    else:
        print(f"[done]    {cell.label}: {wall / 60:.1f} min")
    return None


def last_error(log: Path) -> Optional[str]:
    """The last ``nla: error: ...`` line of a run's log, without its prefix."""
    with open(log, "rb") as file:
        file.seek(max(0, file.seek(0, 2) - 65536))
        lines = file.read().decode("utf-8", "replace").splitlines()
    errors = [line.removeprefix("nla: error: ") for line in lines if line.startswith("nla: error: ")]
    return errors[-1] if errors else None


# --- tables -----------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def format_cell(values: Sequence[Optional[float]]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    mean, std = mean_std([100 * v for v in present])
    return f"{mean:.2f} ± {std:.2f}" if len(present) > 1 else f"{mean:.2f}"


def evaluation_title(evaluation: str, last_k: int) -> str:
    return {"last": "last epoch", "best": "best epoch", "mean_last": f"mean of the last {last_k} epochs"}[evaluation]


def summary_rows(summary: RunSummary, **identity: Any) -> list[dict[str, Any]]:
    """One row per evaluation (last, best, mean of the last k) of a run's summary."""
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
                "last_k": summary.last_k,
            }
        )
    return rows


def collect(experiment: Experiment) -> list[dict[str, Any]]:
    """One row per finished run and evaluation."""
    rows = []
    for protocol, method, seed in experiment.cells():
        run_dir = experiment.run_dir(protocol, method, seed)
        if not (run_dir / RunSummary.FILENAME).is_file():
            continue
        timing = runner_record(run_dir)
        rows += summary_rows(
            RunSummary.read(run_dir),
            method=method,
            protocol=protocol,
            seed=seed,
            wall_s=timing.get("wall_s"),
            run_dir=str(run_dir),
        )
    return rows


def write_tables(experiment: Experiment, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    root = experiment.root
    root.mkdir(parents=True, exist_ok=True)
    class_names = next((list(r["class_acc"]) for r in rows), [])
    last_k = next((r["last_k"] for r in rows), 5)
    csv_path = root / "results.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["method", "protocol", "seed", "evaluation", "epoch", "acc", "mean_acc", *class_names, "wall_s", "run_dir"]
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
                    f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "",
                    r["run_dir"],
                ]
            )

    def values(
        method: str, protocol: str, evaluation: str, key: str, name: Optional[str] = None
    ) -> list[Optional[float]]:
        chosen = [r for r in rows if (r["method"], r["protocol"], r["evaluation"]) == (method, protocol, evaluation)]
        return [r[key] if name is None else r[key].get(name) for r in chosen]

    lines = [f"# {experiment.name}", ""]
    lines += [
        f"Configs: {', '.join(experiment.base)}; seeds {experiment.seeds}; extra arguments: "
        f"`{' '.join(experiment.args) or '(none)'}`. Accuracy in %, mean ± sample std over the seeds that finished "
        "(n per cell in results.csv). Evaluated on the validation split of each run's config (the test split for "
        "RAF-DB and AffectNet, as FER papers do).",
        "",
    ]
    for evaluation in EVALUATIONS:
        lines += [f"## Overall / mean accuracy, {evaluation_title(evaluation, last_k)}", ""]
        header = ["method"]
        for protocol in experiment.protocols:
            header += [f"{protocol} overall", f"{protocol} mean"]
            if experiment.paper:
                header += [f"{protocol} paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in experiment.methods:
            cells = [method]
            for protocol in experiment.protocols:
                cells += [
                    format_cell(values(method, protocol, evaluation, "acc")),
                    format_cell(values(method, protocol, evaluation, "mean_acc")),
                ]
                if experiment.paper:
                    published = experiment.paper.get(method, {}).get(protocol)
                    cells += [" / ".join("—" if v is None else f"{v:.2f}" for v in published) if published else "—"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for protocol in experiment.protocols:
        for evaluation in EVALUATIONS:
            lines += [
                f"## Per-class accuracy, {protocol}, {evaluation_title(evaluation, last_k)}",
                "",
                "| method | " + " | ".join(class_names) + " |",
                "|" + "---|" * (len(class_names) + 1),
            ]
            for method in experiment.methods:
                lines.append(
                    "| "
                    + " | ".join(
                        [method]
                        + [format_cell(values(method, protocol, evaluation, "class_acc", c)) for c in class_names]
                    )
                    + " |"
                )
            lines.append("")
    times = [r["wall_s"] for r in rows if r["evaluation"] == "last" and r["wall_s"] is not None]
    if times:
        lines += [f"Wall time per run: {min(times) / 60:.1f}-{max(times) / 60:.1f} min ({len(times)} runs).", ""]
    markdown_path = root / "results.md"
    markdown_path.write_text("\n".join(lines))
    return markdown_path, csv_path


# --- the command ----------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Run a grid of methods x protocols x seeds and write the paper's tables. Arguments after the "
        "experiment file that are not this command's own go to every `nla fit`, e.g. --data.root /path/to/RAF-DB."
    )
    add_options(parser)
    parser.add_argument("fit_args", nargs=argparse.REMAINDER, help="arguments for every nla fit")
    return parser


def add_options(parser: Any) -> None:
    parser.add_argument("config", help="an experiment YAML, e.g. configs/experiments/table5_rafdb.yaml")
    parser.add_argument("--seeds", type=Optional[list[int]], default=None, help="run only these seeds, e.g. [0,1]")
    parser.add_argument("--methods", type=Optional[list[str]], default=None, help="run only these methods")
    parser.add_argument("--protocols", type=Optional[list[str]], default=None, help="run only these protocols")
    parser.add_argument("--output_dir", type=Optional[str], default=None, help="override the experiment's output_dir")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process")
    parser.add_argument("--dry_run", action="store_true", help="print what would run")
    parser.add_argument("--tables_only", action="store_true", help="only rebuild the tables from finished runs")


OPTIONS = ("--seeds", "--methods", "--protocols", "--output_dir", "--jobs", "--dry_run", "--tables_only")
FLAGS = ("--dry_run", "--tables_only")


def split_options(config: Namespace) -> tuple[Namespace, list[str]]:
    """This command's own options may also follow the experiment file; the rest goes to every fit."""
    own = ArgumentParser()
    add_options(own)
    remaining, known = [], [config.config]
    args = list(config.fit_args or [])
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name in OPTIONS:
            known.append(arg)
            if "=" not in arg and name not in FLAGS and args:
                known.append(args.pop(0))
        else:
            remaining.append(arg)
    parsed = own.parse_args(known, defaults=True)
    for key in ("seeds", "methods", "protocols", "output_dir", "dry_run", "tables_only"):
        if config.get(key) not in (None, False):
            parsed[key] = config[key]
    if config.jobs != 1:
        parsed.jobs = config.jobs
    return parsed, remaining


def run(config: Namespace) -> None:
    options, extra = split_options(config)
    try:
        experiment = Experiment.load(options.config)
        for name in ("methods", "protocols"):
            chosen = options.get(name)
            if chosen:
                grid = getattr(experiment, name)
                unknown = [c for c in chosen if c not in grid]
                if unknown:
                    raise ExperimentError(f"{options.config}: no {name} {unknown}; it has {list(grid)}")
                setattr(experiment, name, {c: grid[c] for c in chosen})
        if options.jobs < 1:
            raise ExperimentError(f"--jobs {options.jobs} must be at least 1")
        if options.seeds is not None:
            experiment.seeds = list(options.seeds)
        if not experiment.seeds:
            raise ExperimentError(f"no seeds to run: give --seeds, e.g. [0], or seeds in {options.config}")
        for seed in experiment.seeds:
            check_seed(seed, "seed")
    except UserError as error:
        print(f"nla experiment: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if options.output_dir:
        experiment.output_dir = options.output_dir
    try:
        failed = [] if options.tables_only else run_grid(experiment, extra, options.dry_run, options.jobs)
    except ExperimentError as error:
        print(f"nla experiment: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except (SIGTERMException, KeyboardInterrupt) as error:
        how, code = ("SIGTERM", 143) if isinstance(error, SIGTERMException) else ("Ctrl-C", 130)
        print(
            f"nla experiment: stopped by {how}; the finished runs are kept, the same command resumes the rest",
            file=sys.stderr,
        )
        raise SystemExit(code) from None
    if options.dry_run:
        return
    markdown, table = write_tables(experiment, collect(experiment))
    print(f"tables: {markdown} and {table}")
    if failed:
        print(f"nla experiment: {len(failed)} run(s) failed: {failed}", file=sys.stderr)
        raise SystemExit(1)
