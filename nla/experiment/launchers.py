"""Where a grid's cells run: processes on this machine (``--launcher local``, ``--jobs N`` at once), or jobs of a
cluster through submitit (``--launcher slurm``; ``submitit_local`` runs the same path on this machine). Either way a
cell is the same ``nla fit`` command writing into the same folder, so locks, resuming and tables do not change.

A launcher starts a cell and returns a handle the runner polls, as it would a process: ``poll()`` (the exit code
once finished), ``terminate()`` and ``kill()`` (a SIGTERM first: nla fit keeps its checkpoints), ``wait(timeout)``,
``close()`` and ``describe()`` (what ``runner.json`` records of where it ran).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Any, Literal, Optional, Protocol

from nla.errors import UserError

LauncherName = Literal["local", "slurm", "submitit_local"]


class Handle(Protocol):
    def poll(self) -> Optional[int]: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: Optional[float] = None) -> Optional[int]: ...
    def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


class ProcessHandle:
    """A cell's ``nla fit`` as a process of this machine, its output appended to the cell's ``fit.log``."""

    def __init__(self, command: list[str], log: Path, environment: Optional[dict[str, str]] = None) -> None:
        self.log: IO[str] = open(log, "a")  # noqa: SIM115  (closed by close(), when the cell ends)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=environment)

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        return self.process.wait(timeout)

    def close(self) -> None:
        self.log.close()

    def describe(self) -> dict[str, Any]:
        return {"pid": self.process.pid}


#: What a job may be stopped with: a cancel (SIGINT under submitit's local executor), a scheduler's SIGTERM, and
#: submitit's warning before a time limit (SIGUSR2).
STOPPING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, name))


def run_logged(command: list[str], cwd: str, log: str) -> int:
    """What a cluster job runs: the cell's command, from the folder the grid was started in, its output appended to
    the cell's ``fit.log``; returns the exit code. A signal that stops the job is passed on to the fit as SIGTERM
    (nla fit then keeps its checkpoints and exits), and the job waits for it: a job that died at once would leave
    its fit running."""
    with open(log, "a") as output:
        process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        for number in STOPPING_SIGNALS:
            signal.signal(number, lambda *_: process.send_signal(signal.SIGTERM))
        return process.wait()


class JobHandle:
    """A cell's ``nla fit`` as a submitit job (SLURM, or submitit's local executor)."""

    def __init__(self, job: Any) -> None:
        self.job = job

    def poll(self) -> Optional[int]:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception:  # the job died outside nla fit (preempted, out of time, out of memory): its log says why
            return 1

    def terminate(self) -> None:
        self.job.cancel(check=False)

    kill = terminate

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        return self.poll()

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"job_id": str(self.job.job_id)}


class LocalLauncher:
    """Each cell a process of this machine; with ``jobs`` at once, each gets its share of the CPU cores as torch's
    threads (``OMP_NUM_THREADS``, unless set already), so that runs side by side do not fight over them."""

    def __init__(self, jobs: int = 1) -> None:
        self.environment: Optional[dict[str, str]] = None
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            share = max(1, (os.cpu_count() or 1) // jobs)
            self.environment = {**os.environ, "OMP_NUM_THREADS": str(share)}

    def start(self, command: list[str], run_dir: Path) -> Handle:
        return ProcessHandle(command, run_dir / "fit.log", self.environment)


class SubmititLauncher:
    """Each cell a job of a cluster's scheduler through submitit, with ``parameters`` for it (submitit's names:
    ``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ...). Its logs go to
    ``folder``; each cell's output to its own ``fit.log`` as for a local run."""

    def __init__(self, folder: Path, cluster: Literal["slurm", "local"], parameters: dict[str, Any]) -> None:
        if importlib.util.find_spec("submitit") is None:
            raise UserError("--launcher slurm submits through submitit, which is not installed: pip install submitit")
        import submitit

        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        try:
            self.executor.update_parameters(**parameters)
        except (TypeError, ValueError) as error:
            raise UserError(f"--cluster {parameters}: {error}") from None
        self.cwd = os.getcwd()

    def start(self, command: list[str], run_dir: Path) -> Handle:
        return JobHandle(self.executor.submit(run_logged, command, self.cwd, str(run_dir / "fit.log")))


def launcher(name: LauncherName, folder: Path, parameters: Optional[dict[str, Any]] = None, jobs: int = 1) -> Any:
    """The launcher ``name`` (for a cluster, its jobs' files in ``folder``; here, ``jobs`` cells at once)."""
    if name == "local":
        if parameters:
            raise UserError(f"--cluster {parameters} sets a cluster's jobs; give --launcher slurm too")
        return LocalLauncher(jobs)
    return SubmititLauncher(folder, "slurm" if name == "slurm" else "local", dict(parameters or {}))
