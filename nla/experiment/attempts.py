"""A grid cell's ``runner.json``: every attempt the runner made at the cell (its command, the digests of the config
files it read, when it started, its wall time and exit code), and whether the run in the cell is the one the grid
names now (:func:`settings_problem`): a table cell holds only runs whose recorded settings are the cell's."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from nla.moved import current_class_paths
from nla.records import RunSummary, write_text_atomic
from nla.rundir import LOCK_FILE

RUNNER_FILE = "runner.json"


def file_digests(path: Path) -> tuple[str, str]:
    """A config file's digests: of its settings (the YAML parsed, so that a comment or the layout may change), and
    of its bytes (what runner.json recorded before nla 0.3, and what a file YAML cannot parse is known by)."""
    data = path.read_bytes()
    raw = hashlib.sha256(data).hexdigest()
    try:
        settings = json.dumps(yaml.safe_load(data), sort_keys=True, default=str)
    except yaml.YAMLError:
        return raw, raw
    return "settings:" + hashlib.sha256(settings.encode()).hexdigest(), raw


def config_digests(command: Sequence[str], *, every_form: bool = False) -> dict[str, Any]:
    """The digest of the settings of each config file a command names: a cell is stale when an overlay's settings
    changed. ``every_form``: both digests of :func:`file_digests` per file, to compare with older records."""
    digests: dict[str, Any] = {}
    for flag, value in itertools.pairwise(command):
        if flag == "--config" and Path(value).is_file():
            forms = file_digests(Path(value))
            digests[value] = forms if every_form else forms[0]
    return digests


def runner_record(run_dir: Path) -> dict[str, Any]:
    """A cell's ``runner.json``: its attempts (command, start, wall time, exit code) and their total wall time.

    An attempt is written when it starts, so one whose runner died without a word (a machine taken back, a SIGKILL)
    is still there, without an exit code: where the fit wrote its summary after the attempt started, it finished
    (exit code 0, as the summary says); else it is closed at the last time anything in the run's folder was written,
    and marked interrupted."""
    path = run_dir / RUNNER_FILE
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"attempts": []}
    finished_at = finished_time(run_dir)
    for attempt in record["attempts"]:
        if attempt.get("wall_s") is not None:
            continue
        if finished_at is not None and finished_at >= attempt["started"] and "moved_aside_to" not in attempt:
            attempt.update(wall_s=finished_at - attempt["started"], exit_code=0, exit_code_from=RunSummary.FILENAME)
            continue
        writes = [
            p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file() and p.name not in (RUNNER_FILE, LOCK_FILE)
        ]
        attempt["wall_s"] = max([0.0, *(t - attempt["started"] for t in writes)])
        attempt["interrupted"] = True
    record["wall_s"] = total_wall_s(record["attempts"])
    return record


def finished_time(run_dir: Path) -> Optional[float]:
    """When the fit in ``run_dir`` wrote the summary of its last epoch; ``None`` where it has not (a stopped fit's
    summary says so, and one that cannot be read is no finished run)."""
    path = run_dir / RunSummary.FILENAME
    try:
        return path.stat().st_mtime if RunSummary.read(path).finished else None
    except (OSError, ValueError):
        return None


def total_wall_s(attempts: list[dict[str, Any]]) -> Optional[float]:
    """The attempts' wall time together (an attempt still running counts 0); ``None`` when there is none."""
    return math.fsum(attempt["wall_s"] or 0.0 for attempt in attempts) if attempts else None


def write_runner_record(run_dir: Path, record: dict[str, Any]) -> None:
    record["wall_s"] = total_wall_s(record["attempts"])
    write_text_atomic(run_dir / RUNNER_FILE, json.dumps(record, indent=2))


def carry_attempts(aside: Path, run_dir: Path) -> None:
    """A cell moved aside keeps its files; its attempts, time spent on the cell though they left no checkpoint,
    go on counting in the new folder's ``runner.json``, each naming the folder it was moved to."""
    record = runner_record(aside)
    if record["attempts"]:
        for attempt in record["attempts"]:
            attempt.setdefault("moved_aside_to", aside.name)
        run_dir.mkdir(parents=True)
        write_runner_record(run_dir, record)


def finished_with(record: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The attempt of a cell's ``runner.json`` (:func:`runner_record`) that finished it (exit code 0); ``None``
    where none is recorded (a run made by hand, or by an older runner)."""
    done = [a for a in record["attempts"] if a.get("exit_code") == 0 and "moved_aside_to" not in a]
    return done[-1] if done else None


def finished_command(attempt: dict[str, Any]) -> list[str]:
    """The command of an attempt without its ``--ckpt_path last`` (a resumed attempt's): what the cell ran."""
    command = list(attempt["command"])
    return command[:-2] if command[-2:] == ["--ckpt_path", "last"] else command


def comparable(command: Sequence[str]) -> list[str]:
    """A cell's command as its settings: the cell's own folder left out (a grid folder moved elsewhere holds the same
    runs) and class paths as they are now (a class nla moved is the same class)."""
    kept, skip = [], False
    for argument in command:
        if skip:
            skip = False
            continue
        if argument == "--trainer.default_root_dir":
            skip = True
            continue
        kept.append(current_class_paths(argument))
    return kept


def changes(finished: Sequence[str], now: Sequence[str]) -> str:
    """What differs between the command a cell finished with and the one the grid gives it now, in a few words."""
    matcher = difflib.SequenceMatcher(a=list(finished), b=list(now), autojunk=False)
    parts = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        was, is_now = shlex.join(finished[i1:i2]), shlex.join(now[j1:j2])
        if tag == "replace":
            parts.append(f"`{was}` is now `{is_now}`")
        elif tag == "delete":
            parts.append(f"`{was}` is not given now")
        elif tag == "insert":
            parts.append(f"`{is_now}` is given now")
    return "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")


def attempts_problem(record: dict[str, Any], command: Sequence[str]) -> Optional[str]:
    """Why the attempts of a cell (those not moved aside) are not all the run ``command`` makes now: an attempt with
    other arguments, or a config file it read that changed since (a run resumed after an overlay was edited is two
    settings in one). ``None`` where every attempt is."""
    now, digests = comparable(finished_command({"command": command})), config_digests(command, every_form=True)
    for attempt in record["attempts"]:
        if "moved_aside_to" in attempt:
            continue
        before = comparable(finished_command(attempt))
        if before != now:
            return changes(before, now)
        recorded = (attempt.get("configs") or {}).items()
        edited = [path for path, digest in recorded if digest not in digests.get(path, ())]
        if edited:
            return f"{', '.join(edited)} changed since"
    return None


def settings_problem(record: dict[str, Any], command: Sequence[str]) -> Optional[str]:
    """Why a finished cell is not the run the grid names now (``command``, its ``nla fit``): no attempt of the grid's
    runner finished it (a fit made by hand), or its attempts ran other settings. ``None`` where it is."""
    if finished_with(record) is None:
        return "no attempt of the grid's runner finished it (runner.json); a fit made there by hand?"
    return attempts_problem(record, command)


def running_attempt(record: dict[str, Any], run_dir: Path) -> Optional[int]:
    """The process of the cell's last attempt, if it still runs the cell's fit (a runner killed without a word leaves
    its fits running; one that has not yet locked the folder is running all the same); ``None`` where none does."""
    attempts = record["attempts"]
    pid = attempts[-1].get("pid") if attempts and attempts[-1].get("exit_code") is None else None
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(run_dir) in command else None
