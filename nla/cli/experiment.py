"""``nla experiment``: the command that runs an experiment file's grid and writes its tables (:mod:`nla.experiment`).

nla experiment configs/experiments/table5_rafdb.yaml --data.root /path/to/RAF-DB
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from typing import Any, Optional

from jsonargparse import ArgumentError, ArgumentParser, Namespace

from nla.cli.messages import Terminated, parse_error_line
from nla.errors import UserError, check_seed
from nla.experiment import Experiment, ExperimentError, collect, finished_runs, run_grid, write_tables
from nla.experiment.curves import draw_curves
from nla.experiment.launchers import LauncherName
from nla.experiment.runner import claim_folder
from nla.settings import expand_home


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="nla experiment",
        exit_on_error=False,
        description="Run a grid of methods x protocols x seeds and write the paper's tables. Arguments after the "
        "experiment file that are not this command's own go to every `nla fit`, e.g. --data.root /path/to/RAF-DB.",
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
    parser.add_argument(
        "--jobs", type=Optional[int], default=None, help="cells run at once (default: 1 here, every cell on a cluster)"
    )
    parser.add_argument(
        "--launcher",
        type=LauncherName,
        default="local",
        help="where cells run: local processes, or jobs of a SLURM cluster through submitit (slurm; submitit_local "
        "runs the same path on this machine)",
    )
    parser.add_argument(
        "--cluster",
        type=Optional[dict[str, Any]],
        default=None,
        help="the cluster jobs' settings, in submitit's names, e.g. '{slurm_partition: gpu, timeout_min: 240, "
        "gpus_per_node: 1, cpus_per_task: 8, mem_gb: 32}'",
    )
    parser.add_argument("--dry_run", action="store_true", help="print what would run")
    parser.add_argument("--tables_only", action="store_true", help="only rebuild the tables from finished runs")


OPTIONS = (
    "--seeds",
    "--methods",
    "--protocols",
    "--output_dir",
    "--jobs",
    "--launcher",
    "--cluster",
    "--dry_run",
    "--tables_only",
)


FLAGS = ("--dry_run", "--tables_only")


def split_options(config: Namespace) -> tuple[Namespace, list[str]]:
    """This command's own options may also follow the experiment file; the rest goes to every fit."""
    own = ArgumentParser(prog="nla experiment", exit_on_error=False)
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
    try:
        parsed = own.parse_args(known, defaults=True)
    except ArgumentError as error:  # an option of this command after the experiment file: one line, as before it
        print(f"nla experiment: error: {parse_error_line(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None
    for key in ("seeds", "methods", "protocols", "output_dir", "dry_run", "tables_only"):
        if config.get(key) not in (None, False):
            parsed[key] = config[key]
    for key in ("jobs", "cluster"):
        if config.get(key) is not None:
            parsed[key] = config[key]
    if config.get("launcher", "local") != "local":
        parsed.launcher = config.launcher
    return parsed, remaining


def run(config: Namespace) -> None:
    options, extra = split_options(config)
    options = expand_home(options)
    try:
        experiment = Experiment.load(options.config)
        whole = copy.deepcopy(experiment)  # the tables are the file's grid, whatever part of it runs now
        for name in ("methods", "protocols"):
            chosen = options.get(name)
            if chosen is not None and not chosen:
                raise ExperimentError(
                    f"--{name} is empty: name some of {list(getattr(experiment, name))}, or leave it out"
                )
            if chosen:
                grid = getattr(experiment, name)
                unknown = [c for c in chosen if c not in grid]
                if unknown:
                    raise ExperimentError(f"{options.config}: no {name} {unknown}; it has {list(grid)}")
                setattr(experiment, name, {c: grid[c] for c in chosen})
        if options.jobs is not None and options.jobs < 1:
            raise ExperimentError(f"--jobs {options.jobs} must be at least 1")
        if options.seeds is not None:
            experiment.seeds = list(options.seeds)
        if not experiment.seeds:
            raise ExperimentError(f"no seeds to run: give --seeds, e.g. [0], or seeds in {options.config}")
        for seed in experiment.seeds:
            check_seed(seed, "seed")
        experiment.check_cells("--seeds" if options.seeds is not None else options.config)
    except UserError as error:
        print(f"nla experiment: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    whole.seeds += [seed for seed in experiment.seeds if seed not in whole.seeds]
    if options.output_dir:
        experiment.output_dir = whole.output_dir = options.output_dir
    failed: list[str] = []
    busy: list[str] = []
    try:
        if options.tables_only:
            fit_args = tables_fit_args(whole, options.config, extra)
        else:
            failed, busy = run_grid(
                experiment, extra, options.dry_run, options.jobs, options.launcher, options.cluster, options.config
            )
            fit_args = list(extra)
        if not options.dry_run:
            runs = finished_runs(whole, fit_args)
            current = [run for run in runs if not run.problem]
            stale = [run for run in runs if run.problem]
            markdown, table = write_tables(whole, collect(whole, current), draw_curves(whole, current), stale)
    except ExperimentError as error:
        print(f"nla experiment: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except (Terminated, KeyboardInterrupt) as error:
        how, code = ("SIGTERM", 143) if isinstance(error, Terminated) else ("Ctrl-C", 130)
        print(
            f"nla experiment: stopped by {how}; the finished runs are kept, the same command resumes the rest",
            file=sys.stderr,
        )
        raise SystemExit(code) from None
    if options.dry_run:
        return
    print(f"tables: {markdown} and {table}")
    for run in stale:  # a cell of the whole grid, whether or not this command chose it
        print(f"[stale]   {run.method} / {run.protocol} / seed {run.seed}: in no table; {run.problem}", file=sys.stderr)
    if failed:
        print(f"nla experiment: {len(failed)} run(s) failed: {failed}", file=sys.stderr)
    if busy:
        print(
            f"nla experiment: {len(busy)} cell(s) still running in a fit of an earlier runner, not finished: {busy}; "
            "the same command, once they end, completes the grid",
            file=sys.stderr,
        )
    if failed or busy:
        raise SystemExit(1)


def tables_fit_args(experiment: Experiment, source: str, given: Sequence[str]) -> Optional[list[str]]:
    """The arguments every fit of the tables' runs was given on the command line: those given now, else those the
    grid's folder recorded, else (``None``) those the runs share. A folder no grid has run in is refused, not made."""
    if not any(experiment.run_dir(*cell).is_dir() for cell in experiment.cells()):
        raise ExperimentError(
            f"no run of grid {experiment.name!r} in {experiment.root}: nothing to tabulate (is --output_dir right?)"
        )
    recorded = claim_folder(experiment, source=source)  # the tables it writes there are this grid's
    return list(given) if given else recorded.get("fit_args")


def main(argv: Sequence[str]) -> None:
    run(build_parser().parse_args(list(argv[1:])))
