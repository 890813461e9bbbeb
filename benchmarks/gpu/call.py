"""One device call's machinery: its clock and deadline, its output folder and log, the processes it runs (each into
its own log, with the time of every epoch a fit prints), the GPU's load, and the machine's environment."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]


EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s")


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the progress bar's cursor moves


class Call:
    """The call's clock, its output folder and its log."""

    def __init__(self, out: Path, deadline_s: float) -> None:
        self.out, self.started, self.deadline_s = out, time.monotonic(), deadline_s
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, Any] = {"deadline_s": deadline_s, "phases": {}}
        self.log_file = (self.out / "log.txt").open("a", buffering=1)
        self.logs = Path(tempfile.mkdtemp(prefix="nla-gpu-logs-"))  # each process's whole output

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def log(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def write(self, name: str, data: Any) -> None:
        partial = self.out / f".{name}.partial"
        partial.write_text(json.dumps(data, indent=2, default=str))
        os.replace(partial, self.out / name)

    def phase(self, name: str, **record: Any) -> None:
        self.summary["phases"][name] = {**self.summary["phases"].get(name, {}), **record}
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        self.write("summary.json", self.summary)


class GPUSampler(threading.Thread):
    """nvidia-smi's utilisation and memory every ``every_s`` seconds, while running."""

    def __init__(self, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stopped = every_s, [], threading.Event()

    def run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self.stopped.is_set():
            try:
                line = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                utilisation, memory = (float(v) for v in line.split(","))
                self.samples.append((utilisation, memory))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self.stopped.wait(self.every_s)

    def stop(self) -> dict[str, Any]:
        self.stopped.set()
        if not self.samples:
            return {}
        utilisation = [u for u, _ in self.samples]
        return {
            "gpu_utilisation_mean_pct": round(sum(utilisation) / len(utilisation), 1),
            "gpu_utilisation_max_pct": max(utilisation),
            "gpu_memory_max_mib": max(m for _, m in self.samples),
            "samples": len(self.samples),
        }


class Process:
    """A command run in the background into its own log, with the time of every ``epoch N/M`` line it prints."""

    def __init__(self, name: str, command: list[str], logs: Path, threads: Optional[int] = None) -> None:
        self.name, self.command = name, command
        self.log_path = logs / f"{name}.log"
        self.epochs: list[tuple[int, int, float]] = []  # (epoch, of epochs, seconds since the start)
        self.started = time.monotonic()
        self.ended: Optional[float] = None
        self.killed = False
        environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.process.stdout:
                log.write(line)
                for part in ANSI.sub("", line).split("\r"):
                    found = EPOCH_LINE.match(part.strip())
                    if found:
                        epoch, total = int(found.group(1)), int(found.group(2))
                        self.epochs.append((epoch, total, time.monotonic() - self.started))

    def poll(self) -> Optional[int]:
        code = self.process.poll()
        if code is not None and self.ended is None:
            self.reader.join(timeout=10)
            self.ended = time.monotonic()
        return code

    def stop(self) -> None:
        """SIGTERM (nla keeps its checkpoints and says so), then SIGKILL after 20 s."""
        if self.poll() is not None:
            return
        self.killed = True
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.poll()

    def wall_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    def compile_notes(self, most: int = 5) -> dict[str, Any]:
        """What torch's logs (TORCH_LOGS, set by the call) said about the compiled step: its recompiles, its CUDA
        graph's unexpected re-recordings and the reasons one was skipped, counted, with the first few lines of each."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        notes: dict[str, Any] = {}
        markers = (
            ("recompiles", "Recompiling function"),
            ("cudagraph_rerecords", "Re-recording function"),
            ("cudagraph_skips", "skipping cudagraph"),
        )
        for key, marker in markers:
            lines = [line.strip() for line in text.splitlines() if marker in line]
            notes[key] = len(lines)
            if lines:
                notes[f"{key}_first"] = lines[:most]
        return notes


def run_one(call: Call, name: str, command: list[str], limit_s: float) -> tuple[Process, Optional[int]]:
    """Run ``command`` to its end or for ``limit_s``, logging it; the exit code (None when stopped)."""
    call.log(f"$ {' '.join(command)}   (limit {limit_s:.0f} s)")
    process = Process(name, command, call.logs)
    while process.poll() is None and process.wall_s() < limit_s:
        time.sleep(0.5)
    if process.poll() is None:
        process.stop()
        code = None
    else:
        code = process.poll()
    call.log(f"{name}: exit {code}, {process.wall_s():.1f} s\n{process.tail()}")
    return process, code


def environment() -> dict[str, Any]:
    import torch

    versions = {}
    for package in (
        "torch",
        "torchvision",
        "lightning",
        "torchmetrics",
        "timm",
        "numpy",
        "opencv-python-headless",
        "albumentations",
        "jsonargparse",
        "pydantic",
        "wandb",
        "onnx",
        "onnxruntime",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "commit": (REPO / ".gpu" / "commit.txt").read_text().strip()
        if (REPO / ".gpu" / "commit.txt").exists()
        else None,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            capability=f"{properties.major}.{properties.minor}",
            memory_gib=round(properties.total_memory / 2**30, 1),
            multiprocessors=properties.multi_processor_count,
        )
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info["nvidia_smi"] = str(error)
    return info
