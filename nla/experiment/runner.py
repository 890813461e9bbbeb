"""Running an experiment's grid: one nla fit process per cell, jobs at a time, each cell's attempts and wall
time in its runner.json; finished cells skipped, interrupted ones resumed, failed starts moved aside."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nla.experiment.attempts import (
    attempts_problem,
    carry_attempts,
    config_digests,
    runner_record,
    running_attempt,
    settings_problem,
    write_runner_record,
)
from nla.experiment.launchers import Handle, LauncherName
from nla.experiment.launchers import launcher as make_launcher
from nla.experiment.spec import CLUSTER_FOLDER, Experiment, ExperimentError
from nla.records import RunSummary, write_text_atomic
from nla.rundir import RunDirectoryError, RunLock, free_path


def cell_state(run_dir: Path) -> str:
    if (run_dir / RunSummary.FILENAME).is_file() and read_summary(run_dir).finished:  # a stopped fit's is not done
        return "done"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    if run_dir.exists():
        return "stale"
    return "new"


def read_summary(run_dir: Path) -> RunSummary:
    """A finished cell's summary; one that cannot be read stops the grid in one line that says what to do."""
    try:
        summary = RunSummary.read(run_dir)
        if not summary.epochs:
            raise ValueError(f"{run_dir / RunSummary.FILENAME}: records no validated epoch")
        return summary
    except (OSError, ValueError) as error:
        raise ExperimentError(f"{error}; move {run_dir} aside and the grid runs the cell again") from None


#: Options a cell's command sets itself: given again in args or on the command line, the last would win and cells
#: would share a seed or a folder.
RESERVED = ("--seed_everything", "--trainer.default_root_dir", "--ckpt_path")


def check_reserved(experiment: Experiment, extra: Sequence[str]) -> None:
    for where, arguments in (("the experiment's args", experiment.args), ("the command line", extra)):
        for argument in arguments:
            name = argument.split("=", 1)[0]
            if name in RESERVED:
                raise ExperimentError(
                    f"{name} in {where}: each cell sets its own (the grid's seeds, <output_dir>/<protocol>/<method>/"
                    "seed<k>, resuming from last.ckpt); use --seeds or --output_dir"
                )


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
    method: str = ""
    protocol: str = ""
    handle: Optional[Handle] = None  # a process, or a cluster job, once started
    started: float = 0.0


def run_grid(
    experiment: Experiment,
    extra: Sequence[str],
    dry_run: bool = False,
    jobs: Optional[int] = None,
    launcher: LauncherName = "local",
    cluster: Optional[dict[str, Any]] = None,
    source: Optional[str] = None,
) -> tuple[list[str], list[str]]:
    """Run every unfinished cell, ``jobs`` at a time (one on this machine, every cell on a cluster, unless given),
    each an ``nla fit`` of its own (:mod:`nla.experiment.launchers`); returns the cells that failed and those left
    to a fit still running from an earlier runner. One runner at a time holds the grid's folder: a second one on it
    stops before touching a cell. A finished cell that the grid would now run with other settings stops the grid
    before anything runs."""
    check_reserved(experiment, extra)
    if dry_run:
        claim_folder(experiment, write=False, source=source)
        plan(experiment, extra, dry_run=True)  # prints what would run
        return [], []
    lock = RunLock(experiment.root, "grid folder", "run it in another --output_dir")
    try:
        lock.acquire()
    except RunDirectoryError as error:
        raise ExperimentError(str(error)) from None
    try:
        claim_folder(experiment, source=source, fit_args=extra)
        states = cell_states(experiment)
        unfinished = sum(state != "done" for state in states.values())
        jobs = jobs or (1 if launcher == "local" else max(1, unfinished))
        try:  # before any cell is touched: a cluster that cannot be reached moves nothing aside
            where = make_launcher(
                launcher, experiment.root / CLUSTER_FOLDER, cluster, jobs=min(jobs, max(1, unfinished))
            )
        except ExperimentError:
            raise
        except Exception as error:  # submitit: no srun, no sbatch
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExperimentError(f"--launcher {launcher}: {first}") from None
        busy: list[str] = []
        pending = plan(experiment, extra, busy=busy, states=states)
        return run_cells(pending, jobs, where), busy
    finally:
        lock.release()


GRID_FILE = "grid.json"


def claim_folder(
    experiment: Experiment, write: bool = True, source: Optional[str] = None, fit_args: Optional[Sequence[str]] = None
) -> dict[str, Any]:
    """A grid's folder holds one grid: its cells and tables. Another grid's name there stops this one, which would
    count the other's runs as its own and write its tables over the other's; so does a second grid file of the same
    name (``source``, the file's path). With ``write``, the grid's name, file and the arguments its command line gives
    every fit (``fit_args``) are recorded there (``grid.json``); what was recorded before is returned."""
    root = experiment.root
    existing = next((folder for folder in (root, *root.parents) if folder.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ExperimentError(f"--output_dir {str(root)!r}: {str(existing)!r} is a file, not a folder")
    path = root / GRID_FILE
    recorded: dict[str, Any] = {}
    if path.is_file():
        try:
            recorded = dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            recorded = {}
    owner, file = recorded.get("name"), recorded.get("file")
    if owner is not None and owner != experiment.name:
        raise ExperimentError(
            f"{root} holds the runs and tables of grid {owner!r}, not {experiment.name!r}: give another --output_dir"
        )
    here = str(Path(source).resolve()) if source else None
    if here and file and file != here and Path(file).is_file():
        raise ExperimentError(
            f"{root} holds the runs and tables of grid {experiment.name!r} of {file}, not of {here}: two grid files "
            "have that name; rename one or give another --output_dir"
        )
    if write:
        root.mkdir(parents=True, exist_ok=True)
        given = list(fit_args) if fit_args is not None else recorded.get("fit_args")
        claimed = {"name": experiment.name, "file": here or file, "fit_args": given}
        write_text_atomic(path, json.dumps({k: v for k, v in claimed.items() if v is not None}, indent=2))
    return recorded


def cell_states(experiment: Experiment) -> dict[tuple[str, str, int], str]:
    """Each cell's :func:`cell_state`, by ``(protocol, method, seed)``."""
    return {cell: cell_state(experiment.run_dir(*cell)) for cell in experiment.cells()}


def plan(
    experiment: Experiment,
    extra: Sequence[str],
    dry_run: bool = False,
    busy: Optional[list[str]] = None,
    states: Optional[dict[tuple[str, str, int], str]] = None,
) -> list[Cell]:
    """The cells to run, each with its command: finished cells skipped, interrupted ones resumed, and a cell that
    died before its first checkpoint moved aside (unless a fit holds it: then it is left alone, and named in
    ``busy``). A cell whose run is not the one the grid would make now (finished, or to be resumed, with other
    arguments or config files) stops the grid before anything moves: its table cell would hold a run of other
    settings, or of two."""
    states = states if states is not None else cell_states(experiment)  # the runner's, read once
    for cell in states:  # a file where a cell's folder goes would stop the grid halfway, at that cell
        run_dir = experiment.run_dir(*cell)
        blocking = next((f for f in (run_dir, *run_dir.parents) if f.exists() and not f.is_dir()), None)
        if blocking is not None:
            raise ExperimentError(f"{blocking} is a file where the grid keeps its runs ({run_dir}); move it aside")
    records = {cell: runner_record(experiment.run_dir(*cell)) for cell in states}
    for (protocol, method, seed), state in states.items():
        run_dir = experiment.run_dir(protocol, method, seed)
        command = fit_command(experiment, protocol, method, seed, extra, resume=False)[2:]
        record = records[protocol, method, seed]
        if state == "done":
            why = settings_problem(record, command)
            if why:
                raise ExperimentError(
                    f"{method} / {protocol} / seed {seed} finished in {run_dir} with other settings than the grid "
                    f"gives it now ({why}); nothing was run: move that folder aside to run the cell again, or give "
                    "another --output_dir"
                )
        why = attempts_problem(record, command) if state == "resume" else None
        if why and not (in_use(run_dir) or running_attempt(record, run_dir)):
            raise ExperimentError(
                f"{method} / {protocol} / seed {seed} was started in {run_dir} with other settings than the grid "
                f"gives it now ({why}); resuming would make one run of two settings; nothing was run: move that folder "
                "aside to run the cell anew"
            )
    pending: list[Cell] = []
    for (protocol, method, seed), state in states.items():
        run_dir = experiment.run_dir(protocol, method, seed)
        label = f"{method} / {protocol} / seed {seed}"
        if state == "done":
            print(f"[done]    {label}: {run_dir}")
            continue
        running = running_attempt(records[protocol, method, seed], run_dir)
        if state in ("stale", "resume") and (in_use(run_dir) or running):
            print(f"[busy]    {label}: a fit is running in {run_dir}; left alone")
            if busy is not None:
                busy.append(label)
            continue
        if state == "stale":
            aside = free_path(run_dir.with_name(run_dir.name + ".incomplete"))
            print(f"[stale]   {label}: no checkpoint in {run_dir}; moved aside to {aside.name}")
            if not dry_run:
                run_dir.rename(aside)
                carry_attempts(aside, run_dir)
        command = fit_command(experiment, protocol, method, seed, extra, resume=state == "resume")
        print(f"[{'resume' if state == 'resume' else 'run':<7}] {label}: {shlex.join(command[2:])}")
        pending.append(Cell(label, run_dir, command, method, protocol))
    return pending


def in_use(run_dir: Path) -> bool:
    """Whether a process holds the run directory's lock (a fit running there)."""
    try:
        RunLock(run_dir).acquire().release()
    except RunDirectoryError:
        return True
    return False


def run_cells(pending: list[Cell], jobs: int, where: Any) -> list[str]:
    """Run ``pending``, ``jobs`` at a time, each started by the launcher ``where``; returns the cells that failed."""
    failed: list[str] = []
    running: list[Cell] = []
    succeeded, start_errors = False, []  # the errors of the runs that failed before their first checkpoint
    shared_error: Optional[str] = None
    try:
        while pending or running:
            while pending and len(running) < jobs:
                running.append(start(pending.pop(0), where))
            time.sleep(0.2)
            for cell in [c for c in running if c.handle is not None and c.handle.poll() is not None]:
                running.remove(cell)
                error = finish(cell, failed)
                succeeded = succeeded or cell.label not in failed
                if cell.label in failed and not (cell.run_dir / "checkpoints" / "last.ckpt").is_file():
                    start_errors.append(((error or "").replace(str(cell.run_dir), "<run>"), cell.method, cell.protocol))
            errors = {error for error, _, _ in start_errors}
            spread = len({m for _, m, _ in start_errors}) > 1 or len({p for _, _, p in start_errors}) > 1
            if not succeeded and len(start_errors) >= 2 and len(errors) == 1 and spread and start_errors[0][0]:
                # the same error in cells of different methods or protocols: what they share is wrong, and the rest
                # would fail alike (one method's own mistake leaves the others to run)
                shared_error, pending = start_errors[0][0], []
    except BaseException:  # SIGTERM, Ctrl-C: the runs still going stop too, and their time so far is recorded
        with deaf_to_interrupts():  # a second Ctrl-C would leave the attempts unrecorded
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


@contextmanager
def deaf_to_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored while the runs are stopped and their attempts recorded (in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def start(cell: Cell, where: Any) -> Cell:
    """Start a cell's ``nla fit`` and record the attempt at once, before anything can kill the runner."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    record = runner_record(cell.run_dir)
    cell.started = time.time()
    cell.handle = where.start(cell.command, cell.run_dir)
    record["attempts"].append(
        {
            "command": cell.command[2:],
            "configs": config_digests(cell.command),
            "started": cell.started,
            "wall_s": None,
            "exit_code": None,
            **cell.handle.describe(),
        }
    )
    write_runner_record(cell.run_dir, record)
    return cell


def stop(cells: Sequence[Cell], grace_s: float = 60.0) -> None:
    """Stop running cells as a scheduler would: SIGTERM to all (nla fit keeps its checkpoints), then SIGKILL to
    those still running after ``grace_s``."""
    handles = [cell.handle for cell in cells if cell.handle is not None]
    for handle in handles:
        handle.terminate()
    deadline = time.time() + grace_s
    for handle in handles:
        try:
            handle.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            handle.kill()
            handle.wait()


def finish(cell: Cell, failed: list[str], interrupted: bool = False) -> Optional[str]:
    """Close a cell's attempt in its ``runner.json`` with its wall time and exit code; a failed run's one-line
    error, if its log ends with one."""
    assert cell.handle is not None
    cell.handle.close()
    code, wall = cell.handle.poll(), time.time() - cell.started
    record = runner_record(cell.run_dir)
    attempt = next(a for a in reversed(record["attempts"]) if a.get("started") == cell.started)
    attempt.update(wall_s=wall, exit_code=code, interrupted=interrupted)
    write_runner_record(cell.run_dir, record)
    if interrupted:
        print(f"[stopped] {cell.label} after {wall / 60:.1f} min; the same command resumes it")
    elif code != 0 or not (cell.run_dir / RunSummary.FILENAME).is_file():
        failed.append(cell.label)
        error = last_error(cell.run_dir / "fit.log")
        advice = ""
        if error and "another --trainer.default_root_dir" in error:  # a fit's advice; a grid sets each cell's folder
            advice = f" (in a grid: move {cell.run_dir} aside and the same command runs the cell anew)"
        print(f"[failed]  {cell.label}: {error or f'exit code {code}'}{advice}; see {cell.run_dir / 'fit.log'}")
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
