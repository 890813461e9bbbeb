"""Running an experiment's grid: one nla fit process per cell, jobs at a time, each cell's attempts and wall
time in its runner.json; finished cells skipped, interrupted ones resumed, failed starts moved aside."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nla.experiment.launchers import Handle, LauncherName
from nla.experiment.launchers import launcher as make_launcher
from nla.experiment.spec import Experiment, ExperimentError
from nla.records import RunSummary
from nla.rundir import LOCK_FILE, RunDirectoryError, RunLock, free_path


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
    handle: Optional[Handle] = None  # a process, or a cluster job, once started
    started: float = 0.0


def run_grid(
    experiment: Experiment,
    extra: Sequence[str],
    dry_run: bool = False,
    jobs: Optional[int] = None,
    launcher: LauncherName = "local",
    cluster: Optional[dict[str, Any]] = None,
) -> list[str]:
    """Run every unfinished cell, ``jobs`` at a time (one on this machine, every cell on a cluster, unless given),
    each an ``nla fit`` of its own (:mod:`nla.experiment.launchers`); returns the cells that failed. One runner at
    a time holds the grid's folder: a second one on it stops before touching a cell."""
    if dry_run:
        plan(experiment, extra, dry_run=True)  # prints what would run
        return []
    lock = RunLock(experiment.root, "grid folder", "run it in another --output_dir")
    try:
        lock.acquire()
    except RunDirectoryError as error:
        raise ExperimentError(str(error)) from None
    try:
        pending = plan(experiment, extra)
        jobs = jobs or (1 if launcher == "local" else max(1, len(pending)))
        where = make_launcher(launcher, experiment.root / "cluster", cluster, jobs=min(jobs, max(1, len(pending))))
        return run_cells(pending, jobs, where)
    finally:
        lock.release()


def plan(experiment: Experiment, extra: Sequence[str], dry_run: bool = False) -> list[Cell]:
    """The cells to run, each with its command: finished cells skipped, interrupted ones resumed, and a cell that
    died before its first checkpoint moved aside (unless a fit holds it: then it is left alone)."""
    pending: list[Cell] = []
    for protocol, method, seed in experiment.cells():
        run_dir = experiment.run_dir(protocol, method, seed)
        state = cell_state(run_dir)
        label = f"{method} / {protocol} / seed {seed}"
        if state == "done":
            print(f"[done]    {label}: {run_dir}")
            continue
        if state in ("stale", "resume") and in_use(run_dir):
            print(f"[busy]    {label}: a fit is running in {run_dir}; left alone")
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
            writes = [
                p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file() and p.name not in (RUNNER_FILE, LOCK_FILE)
            ]
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


def start(cell: Cell, where: Any) -> Cell:
    """Start a cell's ``nla fit`` and record the attempt at once, before anything can kill the runner."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    record = runner_record(cell.run_dir)
    cell.started = time.time()
    cell.handle = where.start(cell.command, cell.run_dir)
    record["attempts"].append(
        {
            "command": cell.command[2:],
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
