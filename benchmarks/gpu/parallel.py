"""Runs side by side on one GPU: ``nla experiment --jobs N`` against one run alone, as aggregate samples per second.

A host-bound run leaves the GPU idle most of the time; several runs at once fill it. The phase runs the main job's
recipe (NLA official, clean RAF-DB) for a few epochs, first one run (``--jobs 1``), then ``jobs`` seeds at once, both
through ``nla experiment`` as a user would. Each run's epochs are timed as its ``fit.log`` prints them; a run's pace
is its training images over the median time between its epoch lines after the first (the first compiles and caches),
so start-up is left out and validation is counted. The aggregate is the sum of the runs' paces.
"""

from __future__ import annotations

import itertools
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from benchmarks.gpu.call import EPOCH_LINE, Call, Process

TRAIN_IMAGES = re.compile(r"train: (\d+) images")


def grid_file(folder: Path, seeds: int) -> Path:
    """The main job's cell as a grid of ``seeds`` seeds."""
    spec = {
        "name": "side_by_side",
        "base": ["configs/rafdb.yaml"],
        "methods": {"NLA official": ["configs/methods/nla.yaml"]},
        "protocols": {"clean": []},
        "seeds": list(range(seeds + 1)),  # seed 0 runs alone, 1..seeds together
        "args": ["--trainer.enable_progress_bar", "false"],
    }
    path = folder / "side_by_side.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class EpochWatch:
    """The time each ``epoch N/M`` line appears in the ``fit.log`` files under a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.started = folder, time.monotonic()
        self.seen: dict[Path, list[float]] = {}
        self.images: dict[Path, int] = {}

    def poll(self) -> None:
        for log in self.folder.rglob("fit.log"):
            lines = log.read_text(errors="replace").splitlines()
            epochs = sum(1 for line in lines if EPOCH_LINE.match(line.strip()))
            times = self.seen.setdefault(log, [])
            times.extend([time.monotonic() - self.started] * (epochs - len(times)))
            found = next((TRAIN_IMAGES.search(line) for line in lines if TRAIN_IMAGES.search(line)), None)
            if found:
                self.images[log] = int(found.group(1))

    def paces(self) -> list[dict[str, Any]]:
        """Per run: its epochs, seconds per epoch after the first, and training images per second."""
        paces = []
        for log, times in sorted(self.seen.items()):
            gaps = [b - a for a, b in itertools.pairwise(times)]
            record: dict[str, Any] = {"run": log.parent.name, "epochs_seen": len(times)}
            if gaps and log in self.images:
                record["epoch_s"] = round(statistics.median(gaps), 2)
                record["samples_per_s"] = round(self.images[log] / statistics.median(gaps), 1)
            paces.append(record)
        return paces


def run_grid(call: Call, name: str, command: list[str], folder: Path, limit_s: float) -> dict[str, Any]:
    call.log(f"$ {' '.join(command)}   (limit {limit_s:.0f} s)")
    watch = EpochWatch(folder)
    process = Process(name, command, call.logs)
    while process.poll() is None and process.wall_s() < limit_s:
        time.sleep(0.5)
        watch.poll()
    process.stop()
    watch.poll()
    call.log(f"{name}: exit {process.poll()}, {process.wall_s():.1f} s\n{process.tail(6)}")
    paces = watch.paces()
    measured = [p["samples_per_s"] for p in paces if "samples_per_s" in p]
    return {
        "command": " ".join(["nla", *command[3:]]),
        "status": "ok" if process.poll() == 0 else ("stopped at its limit" if process.killed else "failed"),
        "wall_s": round(process.wall_s(), 1),
        "runs": paces,
        "runs_measured": len(measured),
        "aggregate_samples_per_s": round(sum(measured), 1) if measured else None,
    }


def side_by_side(
    call: Call, work: Path, fit_args: list[str], jobs: int = 4, epochs: int = 4, reserve_s: float = 15.0
) -> Optional[float]:
    """One run alone, then ``jobs`` at once, ``epochs`` each; the ratio of their aggregate samples/s."""
    folder = work / "side-by-side"
    folder.mkdir(parents=True, exist_ok=True)
    grid = grid_file(folder, jobs)
    args = [*fit_args, "--trainer.max_epochs", str(epochs)]
    results: dict[str, Any] = {"jobs": jobs, "epochs": epochs}
    for name, seeds, share in (("alone", "[0]", 0.35), ("together", f"[{','.join(map(str, range(1, jobs + 1)))}]", 1)):
        output = folder / name
        command = [sys.executable, "-m", "nla", "experiment", str(grid), "--output_dir", str(output)]
        command += ["--seeds", seeds, "--jobs", str(jobs if name == "together" else 1), *args]
        limit = (call.left() - reserve_s) * share
        if limit < 30:
            results[name] = {"status": "not started: no time left"}
            break
        results[name] = run_grid(call, f"side-by-side-{name}", command, output, limit)
    alone = (results.get("alone") or {}).get("aggregate_samples_per_s")
    together = (results.get("together") or {}).get("aggregate_samples_per_s")
    ratio = round(together / alone, 2) if alone and together else None
    results["together_over_alone"] = ratio
    call.write("side_by_side.json", results)
    call.phase("side_by_side", jobs=jobs, alone_samples_per_s=alone, together_samples_per_s=together, ratio=ratio)
    return ratio
