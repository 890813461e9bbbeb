"""Does ``nla predict``'s memory stay flat on a long video? The peak resident memory of the whole command on a short
video and on one ten times as long (the same face moving over a backdrop, 10 frames a second, sampled at
``--fps``), each in a process of its own. Flat means the long video's peak is within a few MB of the short one's,
while its rows are ten times as many. Each video is also run with ``--return_predictions true``, which keeps every
batch's output in memory as Lightning does by default (and as ``nla predict`` did before it turned that off).

    python -m benchmarks.video_memory --ckpt RUN/checkpoints/last.ckpt --data-root ../shared/data/rafdb \\
        --json benchmarks/results/video-memory.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.face_detection import background, paste
from nla.data import load_image, read_rafdb


def write_video(path: Path, face: np.ndarray, seconds: int, rate: int = 10) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), rate, (320, 240))
    backdrop = background(240, 320, np.random.default_rng(0))
    for k in range(seconds * rate):
        frame = backdrop.copy()
        paste(frame, face, 40 + (k % 100), 40, 150)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def peak_memory(command: list[str]) -> dict:
    """The command's peak resident memory in MB (the largest of its processes, from the kernel), its main process's
    resident memory sampled twice a second (where Linux's /proc is there), and its wall time."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trace: list[float] = []

    def sample() -> None:
        while process.poll() is None:
            trace.append(rss_mb(process.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    assert process.stderr is not None
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-2000:]}")
    trace = [mb for mb in trace if mb == mb]
    quarters = {f"main_rss_mb_at_{q}pct": trace[min(len(trace) - 1, len(trace) * q // 100)] for q in (25, 50, 75, 100)}
    return {"peak_mb": usage.ru_maxrss / 1024, **(quarters if trace else {}), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="an nla checkpoint")
    parser.add_argument("--data-root", required=True, help="a RAF-DB copy; one test face is pasted")
    parser.add_argument("--seconds", type=int, default=180, help="the short video's length; the long one is 10x")
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nla-video-memory-"))
    face = load_image(read_rafdb(args.data_root, "test").paths[0])
    results: dict = {"ckpt": args.ckpt, "fps": args.fps, "videos": {}}
    for name, seconds in (("short", args.seconds), ("long", 10 * args.seconds)):
        video = work / f"{name}.mp4"
        write_video(video, face, seconds)
        for variant, extra in (("nla predict", []), ("outputs kept", ["--return_predictions", "true"])):
            run = work / f"run-{name}-{len(extra)}"
            command = [sys.executable, "-m", "nla", "predict", "--ckpt_path", args.ckpt, "--data.prediction.root"]
            command += [str(video), "--data.faces.detect", "true", "--data.prediction.fps", str(args.fps)]
            command += ["--data.num_workers", "1", "--trainer.logger", "false", "--trainer.default_root_dir", str(run)]
            measured = peak_memory(command + extra)
            with open(run / "predict" / "predictions.csv", newline="") as handle:
                rows = sum(1 for _ in csv.DictReader(handle))
            entry = {"seconds": seconds, "rows": rows, **measured}
            results["videos"].setdefault(variant, {})[name] = entry
            print(variant, name, entry, flush=True)
    for by_length in results["videos"].values():
        by_length["peak_mb_growth"] = by_length["long"]["peak_mb"] - by_length["short"]["peak_mb"]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
