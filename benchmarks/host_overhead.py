"""What the host spends on one training step: ``nla fit`` as users launch it, nla's loop in this process, Lightning's
floor and bare loops of the same work.

On a GPU at batch 32 the Python that issues each step, not the device, sets the pace (docs/results.md), so the
figures that matter are measured on the CPU without the device's work:

- **host ms per step**: the thread time of the training process's main thread per step (``time.thread_time``,
  which a busy machine inflates far less than wall time), with a stub backbone whose compute is negligible, in full
  precision (on a CPU without bf16 units, bf16 autocast turns every cast into real arithmetic, in the bare loops too,
  which a GPU's host does not pay), over several interleaved rounds, median. Loops:
  - ``nla fit``: the command line in a subprocess, as users launch it: ``configs/rafdb.yaml`` with every default
    callback, the progress bar and the W&B logger (offline), the stub backbone registered for it, the cached
    pipeline (what ``pipeline: auto`` picks on a GPU) and no validation; ``nla fit, no bar`` and ``nla fit, no bar
    or logger`` take those away, to say what each costs;
  - ``nla``: ``Trainer.fit`` of ``NLAModule`` in this process, with nla's callbacks but no checkpoints, logger or
    progress bar;
  - ``nla, graph step``: the same with ``--model.step_graph true`` (forward, loss, backward and Adam as one
    compiled function);
  - ``Lightning floor``: ``Trainer.fit`` of the same module, data and Adam with none of nla's per-step extras (no
    callbacks, no progress bar, a ``training_step`` that returns the loss alone, :class:`LightningFloor`): what
    Lightning's automatic optimisation and DataLoader cost by themselves;
  - ``bare``: a plain loop of the same work: gather the batch from the same uint8 cache, nla's batch augmentation,
    the model, ``Criterion``, backward, fused Adam;
  - ``bare, model and CE``: the model and plain cross-entropy only.
- **kernels per step**: every ATen operation of an eager step that launches a kernel on a GPU (counted by a
  ``TorchDispatchMode``; views, allocations and profiler markers are not), with ResNet-18 in bf16 autocast and
  channels-last as ``nla fit`` runs it on a GPU, for nla's loop; and what each part contributes. (A
  compiled step runs generated kernels past the dispatcher, where no mode sees them; on a GPU the graph step is one
  CUDA graph replay.)

    python -m benchmarks.host_overhead --rounds 5 --json benchmarks/results/host-overhead-2core.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, Trainer
from timm.models import register_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nla import NLAModule
from nla.callbacks import AccuracySummary, NAWDiagnostics, PredictionWriter, RunReport
from nla.criterion import Criterion, CriterionConfig
from nla.data import RAFDBDataModule
from nla.data.batch_augment import batch_train_augment
from nla.preprocessing import Preprocessing
from tests.fakes import write_rafdb


class StubNet(nn.Module):
    """A backbone whose compute is negligible: average-pooled pixels through one linear layer."""

    def __init__(self, num_classes: int = 7, **kwargs: Any) -> None:
        super().__init__()
        self.num_features = 3
        self.fc = nn.Linear(3, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def benchmark_stub(pretrained: bool = False, **kwargs: Any) -> StubNet:
    return StubNet(**{k: v for k, v in kwargs.items() if k == "num_classes"})


class HostClock(Callback):
    """The thread time between successive training steps' starts: everything the host does for one step.

    Args:
        skip: Steps left out at the start (warm-up).
        path: Where to write the step times (a JSON list of ms) when training ends, for a run in another process.
    """

    def __init__(self, skip: int, path: Optional[str] = None) -> None:
        self.skip, self.path, self.marks = skip, path, []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.marks.append(time.thread_time())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(self.steps_ms()))

    def steps_ms(self) -> list[float]:
        return [1000 * (b - a) for a, b in zip(self.marks[self.skip : -1], self.marks[self.skip + 1 :])]


def package_of(filename: str) -> str:
    """Who a Python function belongs to, by its file: an installed package's name, ``nla``, or ``python`` (the
    standard library and the rest)."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if f"{os.sep}nla{os.sep}" in filename:
        return "nla"
    return "benchmarks" if f"{os.sep}benchmarks{os.sep}" in filename else "python"


class CallCount(Callback):
    """The Python function calls of the training thread per step, from step ``start`` to step ``stop``, by the package
    of the function called: what a loop does per step, counted, where thread time is blurred by the machine. A step
    runs from one batch's start to the next's; the steps that cross an epoch's end (its figures, checkpoint and
    logs) are left out, as the timings' medians leave them out.

    Args:
        start: The first step counted (warm-up before it).
        stop: The step where counting stops.
        path: Where to write the counts (JSON) when training ends, for a run in another process.
    """

    def __init__(self, start: int, stop: int, path: Optional[str] = None) -> None:
        self.start, self.stop, self.path = start, stop, path
        self.calls: Counter[str] = Counter()
        self.step: Counter[str] = Counter()
        self.steps, self._batches = 0, 0

    def _count(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            self.step[package_of(frame.f_code.co_filename)] += 1

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.start < self._batches <= self.stop and batch_idx > 0:  # a step within one epoch ended here
            self.calls.update(self.step)
            self.steps += 1
        self.step = Counter()
        sys.setprofile(self._count if self.start <= self._batches < self.stop else None)
        self._batches += 1

    def per_step(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        counts = {name: round(n / steps, 1) for name, n in self.calls.most_common() if n >= steps / 10}
        return {"steps": self.steps, "total": round(sum(self.calls.values()) / steps, 1), **counts}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        sys.setprofile(None)
        if self.path:
            Path(self.path).write_text(json.dumps(self.per_step()))


#: Operations that launch no kernel: another view of a tensor's memory, an allocation, a profiler's marker.
NO_KERNEL = {
    "detach",
    "alias",
    "lift_fresh",
    "_to_copy_noop",
    "empty",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "_record_function_enter_new",
    "_record_function_exit",
}


#: Which part of a step an operation belongs to, by the first source file on its Python stack that names one.
PARTS = (
    ("nla/losses.py", "criterion"),
    ("nla/criterion.py", "criterion"),
    ("nla/mechanism.py", "mechanism meter"),
    ("nla/batch.py", "step outputs"),
    ("nla/data/", "batch augmentation"),
    ("nla/nonfinite.py", "loss watch"),
    ("nla/callbacks/", "callbacks"),
    ("nla/step_graph.py", "graph step"),
    ("nla/module.py", "module"),
    ("torch/optim/", "optimizer"),
    ("timm/", "model"),
    ("torch/nn/modules/", "model"),  # not torch/nn/functional.py: the criterion calls it too
    ("lightning/", "logging and the loop"),
    ("torchmetrics/", "logging and the loop"),
)


def part_of_step() -> str:
    if torch._C._current_autograd_node() is not None:
        return "backward"
    frame = inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_filename
        for pattern, part in PARTS:
            if pattern in name:
                return part
        frame = frame.f_back
    return "other"


class KernelCount(TorchDispatchMode):
    """Counts the ATen operations run while it is active that launch a kernel (views and aliases do not), by the
    part of the step that ran them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.parts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket.__name__)
        if not func.is_view and name not in NO_KERNEL:
            self.ops[name] += 1
            self.parts[part_of_step()] += 1
        return func(*args, **(kwargs or {}))


class CountOneStep(Callback):
    """Counts the ATen operations of training step ``at`` (from its start to the next step's start)."""

    def __init__(self, at: int) -> None:
        self.at, self.mode, self.total = at, None, None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.total = {"total": sum(self.mode.ops.values()), "by_part": dict(self.mode.parts.most_common())}
            self.mode = None
        if trainer.global_step == self.at:
            self.mode = KernelCount()
            self.mode.__enter__()


def data(root: Path, batch_size: int, image_size: int) -> RAFDBDataModule:
    return RAFDBDataModule(
        str(root),
        batch_size=batch_size,
        num_workers=0,
        pipeline="cached",
        preprocessing=Preprocessing(image_size=image_size),
    )


class LightningFloor(NLAModule):
    """:class:`NLAModule` with a ``training_step`` that returns eq. 8's loss and nothing else (no loss watch, no
    mechanism meter, no outputs for callbacks)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views, labels = self.training_views(batch)
        return self.criterion_output(views, labels).total


def nla_loop(
    root: Path, backbone: str, steps: int, args: Any, step_graph: bool = False, callbacks=(), floor: bool = False
) -> Trainer:
    """nla's training loop in this process, with nla's per-step callbacks but no checkpoints, logger or progress bar
    (``floor``: :class:`LightningFloor` with no callbacks)."""
    model = (LightningFloor if floor else NLAModule)(backbone=backbone, **({"step_graph": True} if step_graph else {}))
    everything = [] if floor else [AccuracySummary(), RunReport(), NAWDiagnostics(), PredictionWriter()]
    trainer = Trainer(
        max_steps=steps,
        max_epochs=60,  # the paper's, for NAW's covariance scheduler; max_steps ends the run
        accelerator="cpu",
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[*everything, *callbacks],
        enable_progress_bar=False,
        default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(model, datamodule=data(root, args.batch_size, args.image_size))
    return trainer


REPO = Path(__file__).resolve().parents[1]

#: The command-line loops: what each takes away from ``nla fit`` as configs/rafdb.yaml runs it.
COMMAND_LINES = {
    "nla fit": [],
    "nla fit, no bar": ["--trainer.enable_progress_bar", "false"],
    "nla fit, no bar or logger": ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"],
}


def command_line_loop(root: Path, steps: int, args: Any, extra: list[str], calls: bool = False) -> Any:
    """``nla fit`` in a subprocess, as users launch it, with the stub backbone registered: thread ms per step (its
    main thread's, from a :class:`HostClock` it writes to a file), or with ``calls`` its Python calls per step
    (:class:`CallCount`)."""
    work = Path(tempfile.mkdtemp())
    if calls:
        probe = {"start": args.warmup, "stop": steps - 1, "path": str(work / "steps.json")}
        clock = {"class_path": "benchmarks.host_overhead.CallCount", "init_args": probe}
    else:
        clock = {
            "class_path": "benchmarks.host_overhead.HostClock",
            "init_args": {"skip": args.warmup, "path": str(work / "steps.json")},
        }
    fit = ["fit", "--config", str(REPO / "configs" / "rafdb.yaml"), "--model.backbone", "benchmark_stub"]
    fit += ["--data.root", str(root), "--data.pipeline", "cached", "--data.num_workers", "0"]
    fit += ["--data.batch_size", str(args.batch_size), "--data.preprocessing.image_size", str(args.image_size)]
    fit += [
        "--trainer.precision",
        args.precision,
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
    ]
    fit += ["--trainer.default_root_dir", str(work / "run"), f"--trainer.callbacks+={json.dumps(clock)}", *extra]
    launch = "import benchmarks.host_overhead; from nla.cli import main; main()"  # registers benchmark_stub
    environment = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", launch, *fit], cwd=REPO, env=environment, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"nla fit failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((work / "steps.json").read_text())


def bare_loop(root: Path, backbone: str, steps: int, args: Any, plain_ce: bool = False) -> list[float]:
    """The same work without Lightning or nla's extras: thread ms per step."""
    datamodule = data(root, args.batch_size, args.image_size)
    datamodule.setup("fit")
    cache = torch.from_numpy(datamodule.preparation.caches["train"])
    labels = torch.as_tensor(datamodule.splits["train"].labels)
    size, mean, std = datamodule.preprocessing.require()
    model = NLAModule(backbone=backbone, num_classes=7).model
    criterion = Criterion(CriterionConfig(loss="ce", naw=False, consistency="none") if plain_ce else CriterionConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    times = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        start = time.thread_time()
        index = torch.randint(0, len(cache), (args.batch_size,), generator=generator)
        images, targets = cache[index], labels[index]
        views = batch_train_augment(images, datamodule.augmentation, size, mean, std)
        with autocast:
            logits = model(views[: len(targets)] if plain_ce else views).float()
        n = len(targets)
        output = criterion(logits[:n], targets, 0, 60, logits_mirror=None if plain_ce else logits[n:])
        output.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(1000 * (time.thread_time() - start))
    return times[args.warmup :]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(loops: dict[str, list[float]], loop: str, reference: str) -> float:
    """The median over rounds of ``loop``'s time over ``reference``'s in the same round: the rounds interleave the
    loops, so a slower minute of the machine cancels out."""
    return round(median([a / b for a, b in zip(loops[loop], loops[reference])]), 2)


def python_calls(root: Path, steps: int, args: Any) -> dict[str, dict[str, float]]:
    """Python calls per step of every loop under Lightning (:class:`CallCount`), by package: one run each."""
    calls = {name: command_line_loop(root, steps + 1, args, extra, calls=True) for name, extra in COMMAND_LINES.items()}
    for name, floor in (("nla", False), ("Lightning floor", True)):
        counter = CallCount(args.warmup, steps)
        nla_loop(root, "benchmark_stub", steps + 1, args, callbacks=[counter], floor=floor)
        calls[name] = counter.per_step()
    return calls


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per loop and round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--precision", default="32-true", help="32-true: a GPU host's cost (see the docstring)")
    parser.add_argument("--kernel-backbone", default="resnet18")
    parser.add_argument("--no-graph", action="store_true", help="leave out the graph step (its compile takes long)")
    parser.add_argument("--calls-only", action="store_true", help="count Python calls per step only (no timings)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    root = write_rafdb(Path(tempfile.mkdtemp()) / "rafdb", train_per_class=150, test_per_class=1, size=20)
    steps = args.warmup + args.steps
    if args.calls_only:
        result = {"python_calls_per_step": python_calls(root, steps, args), "settings": vars(args)}
        write(args.json, result)
        print(json.dumps(result, indent=2))
        return result
    names = [*COMMAND_LINES, "nla", "Lightning floor", "bare", "bare, model and CE"]
    loops: dict[str, list[float]] = {name: [] for name in names}
    if not args.no_graph:
        loops["nla, graph step"] = []
    for _ in range(args.rounds):  # interleaved, so that a slower minute of the machine falls on every loop
        for name in loops:
            if name in COMMAND_LINES:
                loops[name].append(median(command_line_loop(root, steps + 1, args, COMMAND_LINES[name])))
            elif not name.startswith("bare"):
                clock = HostClock(args.warmup)
                graph, floor = "graph" in name, name == "Lightning floor"
                nla_loop(root, "benchmark_stub", steps + 1, args, step_graph=graph, callbacks=[clock], floor=floor)
                loops[name].append(median(clock.steps_ms()))
            else:
                loops[name].append(median(bare_loop(root, "benchmark_stub", steps, args, plain_ce="CE" in name)))
    host = {name: {"median_ms": median(v), "rounds_ms": [round(x, 3) for x in v]} for name, v in loops.items()}
    result: dict[str, Any] = {
        "host_ms_per_step": host,
        "nla_fit_over_floor": ratio(loops, "nla fit", "Lightning floor"),
        "nla_fit_over_bare_ce": ratio(loops, "nla fit", "bare, model and CE"),
        "nla_fit_over_nla": ratio(loops, "nla fit", "nla"),
        "nla_over_bare": ratio(loops, "nla", "bare"),
        "floor_over_bare": ratio(loops, "Lightning floor", "bare"),
        "nla_over_floor": ratio(loops, "nla", "Lightning floor"),
        "settings": vars(args),
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    if not args.no_graph:
        result["graph_over_bare"] = ratio(loops, "nla, graph step", "bare")
    write(args.json, result)  # the timings, before the slower counts
    result["python_calls_per_step"] = python_calls(root, steps, args)
    write(args.json, result)
    # Kernels of the eager step only: a compiled step runs its generated kernels without the dispatcher, so a
    # TorchDispatchMode cannot count them (on a GPU the graph step is one CUDA graph replay).
    counter = CountOneStep(at=args.warmup)
    as_on_a_gpu = argparse.Namespace(
        **{**vars(args), "precision": "bf16-mixed", "image_size": max(args.image_size, 32)}
    )
    nla_loop(root, args.kernel_backbone, args.warmup + 2, as_on_a_gpu, callbacks=[counter])
    result["kernels_per_step"] = {"nla": counter.total}
    write(args.json, result)
    print(json.dumps(result, indent=2))
    return result


def write(path: Optional[str], result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
