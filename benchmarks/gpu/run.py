"""One device call, everything in it, in priority order; each result is written under $OUT as soon as it exists.

    benchmarks/gpu/run            on the GPU machine (after benchmarks/gpu/pack here; carry .gpu)
    benchmarks/gpu/run --tiny     the same code path at tiny sizes on the CPU (benchmarks/gpu/twin)

By default (issue 35's order):

1. the environment: Python, torch and its CUDA, the GPU, the libraries, the commit;
2. ``benchmarks/throughput.py``: the eager fast path and the graph step (``--model.step_graph true``) at batch 32 and
   256, the official-style reference at 32, the model-alone roof at 32 and 256;
3. the main job, ``nla fit --config configs/rafdb.yaml --model.step_graph true``, timed end to end (its epochs are
   timed as they end, so a fit cut short by the deadline still gives its time per epoch; a graph step that fails
   before its first epoch is noted and the job runs eagerly instead);
4. side by side (benchmarks/gpu/parallel.py): ``nla experiment --jobs 4`` against one run, as aggregate samples/s.

``--phases`` picks others: ``smoke`` (a short fit with its host waits counted by benchmarks/gpu/syncs.py),
``main_job_eager``, ``face_start`` (the main job from dlib's face network in float16: ``pack --face``),
``cells`` (configs/experiments/gpu_rafdb.yaml's cells side by side), ``profile``, ``compiled``.

It keeps a deadline (``--deadline``, default 530 s from its start): no phase or cell is started that the time left
cannot hold, and a phase still running at the deadline is stopped, keeping what it finished. Everything it writes
fits the 8 files a call returns:

    summary.json     the environment and every phase: status, wall time, results (rewritten after each phase)
    log.txt          each command and its output
    syncs.json       host waits per training step, on the GPU
    throughput.json  benchmarks/throughput.py's results (throughput-compiled.json: with --compile)
    profile.txt      one epoch of the main job under Lightning's SimpleProfiler (``--phases ... profile``)
    fit.json         the main job: wall time, epochs and their times, its summary
    fit-face.json    the same for the main job from the face start (``--phases ... face_start``)
    side_by_side.json  one run alone and four at once: each run's epoch time and samples/s, the aggregate ratio
    cells.json       every cell: command, status, wall time, accuracies
    runs.tar.gz      configs, summaries, metrics and figures of every run (no checkpoints)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks.gpu import face
from benchmarks.gpu.call import REPO, Call, GPUSampler, Process, environment, run_one
from benchmarks.gpu.parallel import side_by_side

EXPERIMENT = REPO / "configs" / "experiments" / "gpu_rafdb.yaml"
MAIN_CELL = ("clean", "NLA official")  # the main job is this cell of the grid
CELL_ORDER = [  # which cells go first when not all fit
    ("clean", "CE"),
    ("noise 30%", "CE"),
    ("noise 30%", "NLA from_scratch"),
    ("clean", "NLA from_scratch"),
    ("noise 30%", "NLA official"),
]
# Tiny sizes for the twin: the same commands, on the CPU, in seconds, with the GPU's pixel pipeline and precision.
# The graph step beside the eager fast path, at batch 32 and 256 (on the CPU twin: traced with aot_eager, no codegen).
GRAPH = ["--step-graph", "--fast-batch-sizes", "256"]
GRAPH_TINY = ["--step-graph", "--graph-backend", "aot_eager", "--graph-warmup", "2", "--fast-batch-sizes", "16"]
TINY_FIT = [
    "--data.pipeline",
    "cached",
    "--trainer.precision",
    "bf16-mixed",
    "--data.preprocessing.image_size",
    "32",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.max_epochs",
    "2",
]


# --- 1. environment ------------------------------------------------------------------------------------------


# --- the data ----------------------------------------------------------------------------------------------------


def rafdb_root(tiny: bool) -> Path:
    packed = REPO / ".gpu" / "data" / "rafdb"
    if packed.is_dir():
        return packed
    if not tiny:
        raise SystemExit("run: no RAF-DB in .gpu/data/rafdb; run benchmarks/gpu/pack first")
    from tests.fakes import write_rafdb

    return write_rafdb(Path(tempfile.mkdtemp()) / "rafdb", train_per_class=12, test_per_class=4, size=100)


def nla(*args: str) -> list[str]:
    return [sys.executable, "-m", "nla", *args]


# --- the phases --------------------------------------------------------------------------------------------------


def smoke(call: Call, work: Path, data: Path, tiny: bool) -> None:
    syncs = work / "syncs.json"
    command = nla(
        "fit",
        "--config",
        "configs/rafdb.yaml",
        "--data.root",
        str(data),
        "--trainer.default_root_dir",
        str(work / "runs" / "smoke"),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "30",
        "--trainer.limit_val_batches",
        "10",
        "--trainer.callbacks+=benchmarks.gpu.syncs.CudaSyncCount",
        "--trainer.callbacks.output",
        str(syncs),
        "--trainer.callbacks.start",
        "5",
        "--trainer.callbacks.steps",
        "20",
        *([*TINY_FIT, "--trainer.limit_train_batches", "8", "--trainer.max_epochs", "1"] if tiny else []),
    )
    process, code = run_one(call, "smoke", command, limit_s=min(150.0, call.left() - 10))
    summary = work / "runs" / "smoke" / "summary.json"
    record: dict[str, Any] = {"status": "ok" if code == 0 else f"failed (exit {code})", "wall_s": process.wall_s()}
    if summary.exists():
        record["last"] = json.loads(summary.read_text()).get("last")
    if syncs.exists():
        call.write("syncs.json", json.loads(syncs.read_text()))
    call.phase("smoke", **record)


def throughput(call: Call, work: Path, data: Path, tiny: bool, compiled: bool = False) -> None:
    """benchmarks/throughput.py; ``compiled``: with the fast path and the roof under torch.compile, and a shorter
    pipelines-only measurement (compiling takes the time)."""
    name = "throughput-compiled" if compiled else "throughput"
    result = work / f"{name}.json"
    if tiny:
        sizes = ["--device", "cpu", "--steps", "3", "--warmup", "1", "--batch-size", "8", "--image-size", "32"]
        sizes += ["--workers", "2", "--pipeline-steps", "3", "--rounds", "1"]
        sizes += ["--compile"] if compiled else ["--roof-batch-sizes", "16", *GRAPH_TINY]
    elif compiled:
        sizes = ["--device", "cuda", "--steps", "100", "--warmup", "20", "--batch-size", "32", "--image-size", "224"]
        sizes += ["--workers", "8", "--pipeline-steps", "10", "--rounds", "1", "--compile"]
    else:
        sizes = ["--device", "cuda", "--steps", "100", "--warmup", "20", "--batch-size", "32", "--image-size", "224"]
        sizes += ["--workers", "8", "--pipeline-steps", "20", "--rounds", "3", "--roof-batch-sizes", "256", *GRAPH]
    command = [sys.executable, "benchmarks/throughput.py", *sizes, "--data-root", str(data), "--json", str(result)]
    process, code = run_one(call, name, command, limit_s=min(300.0, call.left() - 10))
    record: dict[str, Any] = {"status": "ok" if code == 0 else f"failed (exit {code})", "wall_s": process.wall_s()}
    record.update(process.compile_notes())
    if result.exists():
        measured = json.loads(result.read_text())
        call.write(f"{name}.json", measured)
        record.update(
            {k: v for k, v in measured.items() if k.endswith(("_per_s", "_over_reference", "_over_roof", "_over_fast"))}
        )
    call.phase(name, **record)


def profile(call: Call, work: Path, data: Path, tiny: bool) -> None:
    """One epoch of the main job under Lightning's SimpleProfiler: the time of every hook and callback per step."""
    run_dir = work / "runs" / "profile"
    command = nla("fit", "--config", "configs/rafdb.yaml", "--data.root", str(data))
    command += ["--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "1"]
    command += ["--trainer.profiler", "lightning.pytorch.profilers.SimpleProfiler"]
    command += ["--trainer.profiler.dirpath", str(work), "--trainer.profiler.filename", "profile"]
    command += [*(TINY_FIT if tiny else [])]
    process, code = run_one(call, "profile", command, limit_s=min(120.0, call.left() - 10))
    report = work / "fit-profile.txt"
    if report.exists():
        shutil.copy(report, call.out / "profile.txt")
    call.phase("profile", status="ok" if code == 0 else f"failed (exit {code})", wall_s=round(process.wall_s(), 1))


def cell_commands(data: Path, tiny: bool) -> dict[tuple[str, str], tuple[Path, list[str]]]:
    from nla.experiment import Experiment, fit_command

    experiment = Experiment.load(EXPERIMENT)
    extra = ["--data.root", str(data), *(TINY_FIT if tiny else [])]
    return {
        (protocol, method): (
            experiment.run_dir(protocol, method, seed),
            fit_command(experiment, protocol, method, seed, extra, resume=False),
        )
        for protocol, method, seed in experiment.cells()
    }


def run_record(run_dir: Path) -> dict[str, Any]:
    summary = run_dir / "summary.json"
    if not summary.exists():
        return {}
    saved = json.loads(summary.read_text())
    return {key: saved.get(key) for key in ("last", "best", "best_by_mean_acc", "mean_last", "environment")}


def face_folder(work: Path, tiny: bool) -> Optional[Path]:
    """``.gpu/face`` (``benchmarks/gpu/pack --face``: dlib's face network in float16); for the twin, a tiny face
    network of dlib's format converted the same way; ``None`` when a real call has none."""
    packed = REPO / ".gpu" / "face"
    if (packed / face.SETTINGS).is_file():
        return packed
    if not tiny:
        return None
    from tests.backbones.dlib_files import tiny_face_network, write_face_network

    face.convert(write_face_network(work / "tiny-face.dat", tiny_face_network()), work / "face")
    return work / "face"


def main_job(
    call: Call,
    data: Path,
    tiny: bool,
    run_dir: Path,
    graph: bool = True,
    reserve_s: float = 0.0,
    start: Optional[list[str]] = None,
) -> Optional[float]:
    """The main job with the graph step (``graph``; eagerly if the graph step fails at its start), timed; returns
    its (measured or extrapolated) wall time for a whole run. ``reserve_s`` is left for the phases after it.
    ``start``: ``nla fit`` options for another start of the backbone (the face_start phase: fit-face.json)."""
    name, output = ("face_start", "fit-face.json") if start else ("main_job", "fit.json")
    command = nla("fit", "--config", "configs/rafdb.yaml", "--data.root", str(data))
    command += ["--trainer.default_root_dir", str(run_dir), *(TINY_FIT if tiny else []), *(start or [])]
    if graph:
        command += ["--model.step_graph", "true", *(["--model.compile_backend", "aot_eager"] if tiny else [])]
    sampler = GPUSampler()
    sampler.start()
    process, code = run_one(call, name.replace("_", "-"), command, limit_s=call.left() - 15 - reserve_s)
    gpu = sampler.stop()
    if graph and code not in (0, None) and not process.epochs:  # the graph step failed: the job as it runs today
        call.phase(f"{name}_graph", status=f"failed (exit {code}) before its first epoch", tail=process.tail(12))
        shutil.rmtree(run_dir, ignore_errors=True)
        return main_job(call, data, tiny, run_dir, graph=False, reserve_s=reserve_s, start=start)
    ends = {epoch: seconds for epoch, _, seconds in process.epochs}  # the last line of each epoch
    epochs = sorted(ends.items())
    total = process.epochs[-1][1] if process.epochs else None
    record: dict[str, Any] = {
        "command": " ".join(["nla", *command[3:]]),
        "step_graph": graph,
        "status": "ok" if code == 0 else ("stopped at the deadline" if process.killed else f"failed (exit {code})"),
        "wall_s": round(process.wall_s(), 1),
        "epochs_done": len(epochs),
        "epochs": total,
        "epoch_end_s": [round(t, 1) for _, t in epochs],
        **process.compile_notes(),
        **gpu,
        **run_record(run_dir),
    }
    estimate: Optional[float] = process.wall_s() if code == 0 else None
    if code != 0 and len(epochs) >= 2 and total:
        per_epoch = (epochs[-1][1] - epochs[0][1]) / (len(epochs) - 1)
        estimate = epochs[0][1] + per_epoch * (total - 1)
        record["estimated_wall_s"] = round(estimate, 1)
    call.write(output, record)
    call.phase(name, **{k: v for k, v in record.items() if k not in ("environment", "epoch_end_s")})
    return estimate if code == 0 else None


def grid_cells(call: Call, cells: dict, alone_s: Optional[float], utilisation: Optional[float]) -> None:
    """As many cells as the time left holds, started together; each is stopped at the deadline if still running."""
    if alone_s is None:
        call.phase("cells", status="not started: the main job did not finish, so a cell's time is unknown")
        return
    chosen: list[tuple[str, str]] = []
    for k in range(len(CELL_ORDER), 0, -1):  # k runs side by side: each as slow as the GPU's share allows
        share = max(1.0, (k + 1) * (utilisation or 100.0) / 100.0) if k > 1 else 1.0
        estimate = alone_s * share * 1.15
        if estimate < call.left() - 20:
            chosen = CELL_ORDER[:k]
            break
    record: dict[str, Any] = {"alone_s": round(alone_s, 1), "time_left_s": round(call.left(), 1)}
    if not chosen:
        call.phase("cells", status="not started: the time left cannot hold one", **record)
        return
    call.log(f"cells side by side: {chosen}")
    sampler = GPUSampler()
    sampler.start()
    running = []
    for protocol, method in chosen:
        run_dir, command = cells[(protocol, method)]
        call.log(f"$ {' '.join(command)}")
        name = f"cell-{method}-{protocol}".replace(" ", "_").replace("%", "pct")
        threads = max(1, (os.cpu_count() or 2) // (len(chosen) + 1))  # the cells share the CPU cores
        running.append(((protocol, method), run_dir, command, Process(name, command, call.logs, threads)))
    while any(p.poll() is None for *_, p in running) and call.left() > 10:
        time.sleep(1)
    for *_, process in running:
        process.stop()
    gpu = sampler.stop()
    results = []
    for (protocol, method), run_dir, command, process in running:
        code = process.poll()
        results.append(
            {
                "protocol": protocol,
                "method": method,
                "seed": 0,
                "command": " ".join(["nla", *command[3:]]),
                "status": "ok" if code == 0 else ("stopped at the deadline" if process.killed else f"exit {code}"),
                "wall_s": round(process.wall_s(), 1),
                "epochs_done": len(process.epochs),
                **run_record(run_dir),
            }
        )
        call.log(f"{process.name}: exit {code}, {process.wall_s():.1f} s\n{process.tail(8)}")
    call.write("cells.json", {"side_by_side": len(running), **gpu, "cells": results})
    call.phase("cells", status="ran", side_by_side=len(running), **gpu, **record)


def tables(call: Call) -> None:
    """The grid's results.md and results.csv, laid out like the paper's tables, from the runs that finished."""
    from nla.experiment import Experiment, collect, write_tables

    experiment = Experiment.load(EXPERIMENT)
    try:
        rows = collect(experiment)
        if rows:
            markdown, _ = write_tables(experiment, rows)
            call.log(markdown.read_text())
    except Exception as error:  # the tables are a convenience; the JSON files hold the numbers
        call.log(f"tables: {type(error).__name__}: {error}")


def pack_runs(call: Call, work: Path) -> None:
    """Configs, summaries, metrics, the logs and the last figures of every run, within 15 MB."""
    target = call.out / "runs.tar.gz"
    partial = call.out / ".runs.tar.gz.partial"
    with tarfile.open(partial, "w:gz") as archive:
        for folder in (call.logs, work / "runs", REPO / "runs" / "experiments" / "gpu_rafdb"):
            if not folder.exists():
                continue
            for path in sorted(folder.rglob("*")):
                if not path.is_file() or path.suffix == ".ckpt" or path.stat().st_size > 2_000_000:
                    continue
                if path.suffix == ".png" and "epoch" in path.stem and not path.stem.endswith(("059", "001")):
                    continue  # the first and last epochs' figures only
                archive.add(path, arcname=str(path.relative_to(folder.parent)))
    if partial.stat().st_size < 15_000_000:
        os.replace(partial, target)
    else:
        partial.unlink()
        call.log("runs.tar.gz would exceed 15 MB; not written")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: the device twin")
    parser.add_argument("--deadline", type=float, default=530.0, help="seconds from the start; nothing runs past it")
    parser.add_argument(
        "--phases",
        nargs="*",
        default=["throughput", "main_job", "side_by_side"],
        choices=[
            "smoke",
            "throughput",
            "face_start",
            "main_job",
            "main_job_eager",
            "side_by_side",
            "cells",
            "profile",
            "compiled",
        ],
        help="what to run, in this order (smoke: a short fit with its host waits counted; main_job: with the graph "
        "step, main_job_eager: without; face_start: the main job from dlib's face network in float16, which "
        "benchmarks/gpu/pack --face puts in .gpu/face; side_by_side: nla experiment --jobs 4 against one run; "
        "cells: the grid gpu_rafdb side by side; profile: one epoch under Lightning's SimpleProfiler; compiled: "
        "throughput.py with --compile)",
    )
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT") or REPO / ("twin-results" if args.tiny else "gpu-results"))
    call = Call(out, args.deadline)
    work = Path(tempfile.mkdtemp(prefix="nla-gpu-"))
    os.environ.setdefault("WANDB_MODE", "disabled")
    # torch says why it recompiles the graph step, records its CUDA graph again or runs without one; the phases
    # count those lines.
    os.environ.setdefault("TORCH_LOGS", "recompiles,cudagraphs")
    shutil.rmtree(REPO / "runs" / "experiments" / "gpu_rafdb", ignore_errors=True)  # a fresh grid each call

    call.summary["environment"] = environment()
    call.summary["tiny"] = args.tiny
    call.phase("environment", status="ok")
    call.log(json.dumps(call.summary["environment"]))
    data = rafdb_root(args.tiny)
    cells = cell_commands(data, args.tiny)
    try:
        alone = None
        for phase in args.phases:
            if phase == "smoke":
                smoke(call, work, data, args.tiny)
            elif phase in ("throughput", "compiled"):
                throughput(call, work, data, args.tiny, compiled=phase == "compiled")
            elif phase in ("main_job", "main_job_eager"):
                reserve = 150.0 if "side_by_side" in args.phases else 0.0
                run_dir = cells[MAIN_CELL][0]
                alone = main_job(call, data, args.tiny, run_dir, graph=phase == "main_job", reserve_s=reserve)
            elif phase == "face_start":
                folder = face_folder(work, args.tiny)
                if folder is None:
                    call.phase("face_start", status="not run: no .gpu/face (benchmarks/gpu/pack --face)")
                    continue
                later = args.phases[args.phases.index(phase) + 1 :]
                reserve = call.left() / 2 if {"main_job", "main_job_eager"} & set(later) else 0.0
                reserve += 150.0 if "side_by_side" in later else 0.0
                start = face.fit_arguments(folder, smallest=args.tiny)
                main_job(call, data, args.tiny, work / "runs" / "face-start", reserve_s=reserve, start=start)
            elif phase == "side_by_side":
                graph = call.summary["phases"].get("main_job", {}).get("step_graph", False)
                fit_args = ["--data.root", str(data), *(TINY_FIT if args.tiny else [])]
                if graph:
                    fit_args += ["--model.step_graph", "true"]
                    fit_args += ["--model.compile_backend", "aot_eager"] if args.tiny else []
                side_by_side(call, work, fit_args, jobs=4, epochs=3 if args.tiny else 4)
            elif phase == "cells":
                utilisation = call.summary["phases"].get("main_job", {}).get("gpu_utilisation_mean_pct")
                grid_cells(call, cells, alone, utilisation)
            elif phase == "profile":
                profile(call, work, data, args.tiny)
    finally:
        tables(call)
        pack_runs(call, work)
        call.phase("end", status="done", elapsed_s=round(call.elapsed(), 1))
        call.log(f"done in {call.elapsed():.0f} s; results in {out}")


if __name__ == "__main__":
    main()
