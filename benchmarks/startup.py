"""How fast the ``nla`` command answers, beside ``python -c "import torch"`` measured in the same run.

Interleaved rounds (torch, ``nla --help``, ``nla compare``, ``nla fit --help`` with its help cached, ``nla fit --help``
rendered afresh), each a new process, wall time; medians and ranges. ``nla compare`` reads a run's summary.json,
written here by a tiny synthetic summary so that the measurement needs no training.

    python benchmarks/startup.py --rounds 5 --json benchmarks/results/startup-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nla.records import Evaluation, RunSummary

NLA = [sys.executable, "-m", "nla"]


def write_run(folder: Path) -> Path:
    """A run directory with a summary.json of three epochs, as a fit writes it."""
    names = ["happy", "sad"]
    epochs = [Evaluation.from_confusion(np.array([[8 + e, 2 - e], [3, 7]]), names, epoch=e) for e in range(3)]
    folder.mkdir(parents=True)
    RunSummary(epochs).write(folder)
    return folder


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    run = write_run(work / "run")
    warm_cache, env = work / "cache", {**os.environ, "COLUMNS": "100"}
    commands = {
        "import torch": ([sys.executable, "-c", "import torch"], None),
        "nla --help": ([*NLA, "--help"], None),
        "nla compare": ([*NLA, "compare", str(run)], None),
        "nla fit --help (help kept)": ([*NLA, "fit", "--help"], warm_cache),
        "nla fit --help (rendered)": ([*NLA, "fit", "--help"], "fresh"),
    }
    timed(commands["nla fit --help (help kept)"][0], {**env, "XDG_CACHE_HOME": str(warm_cache)})  # keep it once
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, (command, cache) in commands.items():
            folder = tempfile.mkdtemp(dir=work) if cache == "fresh" else str(cache or work / "none")
            times[name].append(timed(command, {**env, "XDG_CACHE_HOME": folder}))
    torch_s = statistics.median(times["import torch"])
    results = {
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "median_s": {name: round(statistics.median(values), 3) for name, values in times.items()},
        "range_s": {name: [round(min(v), 3), round(max(v), 3)] for name, v in times.items()},
        "over_import_torch": {name: round(statistics.median(v) / torch_s, 3) for name, v in times.items()},
    }
    print(f"{'command':<30}{'median s':>10}{'range s':>16}{'/ import torch':>16}")
    for name in commands:
        low, high = results["range_s"][name]
        print(
            f"{name:<30}{results['median_s'][name]:>10.2f}{f'{low:.2f}-{high:.2f}':>16}"
            f"{results['over_import_torch'][name]:>16.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
