"""Training throughput of nla's fast path against an official-style loop and against the model alone.

One run, one device, four measurements (a sample is an image plus its mirror):

(a) fast: ``nla``'s own Lightning training (NLAModule + RAFDBDataModule with the cached pipeline): uint8
    cache, batched augmentation on the device, one forward pass over both views, channels-last, bf16 mixed
    precision on a GPU;
(b) reference: a loop written the way the authors' code trains: per-sample cv2 decode, numpy noise and
    PIL/torchvision transforms in DataLoader workers, fp32, two forward passes, Adam;
(a') graph (``--step-graph``): (a) with ``--model.step_graph true``, the step as one compiled graph;
(c) roof: the model alone on synthetic tensors already on the device, with (a)'s settings;
(d) the two data pipelines alone, without a model (images per second).

    python benchmarks/throughput.py --device cuda --data-root ../shared/data/rafdb --json benchmarks/results/h100.json
    python benchmarks/throughput.py --device cpu --steps 10 --batch-size 8 --image-size 64

Without --data-root a synthetic RAF-DB (100 x 100 JPEGs, like the real aligned crops) is written to a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

from benchmarks.official_loop import endless, reference_loader
from nla import Criterion, NLAModule
from nla.backbones import create_backbone
from nla.data import RAFDBDataModule, batch_train_augment
from nla.data.sources.rafdb import MEAN, STD
from nla.preprocessing import Preprocessing
from tests.fakes import write_rafdb


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- (a) the fast path, through Lightning -----------------------------------------------------------


class StepTimer(Callback):
    """Wall time of ``steps`` whole training iterations (fetch, augment, forward, backward, step) after ``warmup``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.end = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            synchronize(pl_module.device)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.start = time.perf_counter()
        elif trainer.global_step == self.warmup + self.steps:
            synchronize(pl_module.device)
            self.end = time.perf_counter()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS on Linux


def cached_data(args, root: Path, batch_size: int) -> RAFDBDataModule:
    """nla's RAF-DB data with the cached pipeline, as the fast path and the pipelines-only measurement use it."""
    return RAFDBDataModule(
        str(root),
        batch_size=batch_size,
        preprocessing=Preprocessing(image_size=args.image_size),
        num_workers=args.workers,
        pipeline="cached",
        drop_last=True,
    )


def measure_fast(
    args, root: Path, device: torch.device, batch_size: Optional[int] = None, step_graph: bool = False
) -> tuple[float, float]:
    """Samples/s of nla's own training at ``batch_size`` (default ``--fast-batch-size``); ``step_graph``: with
    ``--model.step_graph true`` (the first steps compile the graph: ``--graph-warmup`` of them are not timed)."""
    n = batch_size or args.fast_batch_size
    data = cached_data(args, root, n)
    model = NLAModule(
        compile=args.compile and not step_graph,
        channels_last=True,
        step_graph=step_graph,
        compile_backend=args.graph_backend if step_graph else "inductor",
    )
    warmup = max(args.warmup, args.graph_warmup) if step_graph else args.warmup
    timer = StepTimer(warmup, args.steps)
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=warmup + args.steps,
        max_epochs=60,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(model, datamodule=data)
    return args.steps * n / (timer.end - timer.start), peak_memory_mb(device)


# --- (b) the official-style reference loop ------------------------------------------------------------


def measure_reference(args, root: Path, device: torch.device) -> float:
    model = create_backbone("resnet18", 7).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    criterion = Criterion()
    batches = endless(reference_loader(args, root))
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        logits_mirror = model(torch.flip(images, dims=[3]))  # a second forward pass
        loss = criterion(logits, labels, 0, 60, logits_mirror=logits_mirror).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


# --- (c) the roof: the model alone ----------------------------------------------------------------------


def measure_roof(args, device: torch.device, batch_size: Optional[int] = None) -> float:
    module = NLAModule(num_classes=7, compile=args.compile, channels_last=True).to(device)
    criterion = Criterion()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)  # as NLAModule's
    n = batch_size or args.fast_batch_size
    images = torch.randn(n, 3, args.image_size, args.image_size, device=device)
    views = torch.cat([images, images.flip(-1)]).contiguous(
        memory_format=torch.channels_last
    )  # as the fast path delivers them
    labels = torch.randint(0, 7, (n,), device=device)
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = module(views)  # compiled with --compile, as the fast path's
        logits = logits.float()
        loss = criterion(logits[:n], labels, 0, 60, logits_mirror=logits[n:]).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return args.steps * n / (time.perf_counter() - start)


# --- (d) the data pipelines alone --------------------------------------------------------------------------


def measure_pipelines(args, root: Path, device: torch.device) -> dict[str, float]:
    """Images/s of each pipeline delivering the model's input (views and mirrors), in interleaved rounds.

    Rounds alternate fast, reference, fast, ... so that a noisy machine slows both alike. Each reference
    round starts its workers, lets them fill their queues and drains those untimed, and shuts them down
    after, so that they neither work for the reference during a fast round nor start a round with a
    stock of batches. Returns medians and ranges.
    """
    data = cached_data(args, root, args.batch_size)
    data.setup("fit")
    fast_batches = endless(data.train_dataloader())

    def fast_round() -> float:
        def step():
            images = next(fast_batches).image.to(device, non_blocking=True)
            return batch_train_augment(images, data.augmentation, data.image_size, MEAN, STD)

        return timed(step, untimed=1)

    loader = reference_loader(args, root, persistent_workers=False)
    prefetched = max(args.workers, 1) * (loader.prefetch_factor or 1)

    def reference_round() -> float:
        batches = iter(loader)  # new workers

        def step():
            images = next(batches)[0].to(device, non_blocking=True)
            return images, torch.flip(images, dims=[3])  # the official loop flips for its second pass

        return timed(step, untimed=prefetched + 1)  # the iterator, and its workers, end with this round

    def timed(step, untimed: int) -> float:
        for _ in range(untimed):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.pipeline_steps):
            step()
        synchronize(device)
        return args.pipeline_steps * args.batch_size / (time.perf_counter() - start)

    fast_round(), reference_round()  # warm-up
    fast_rates, reference_rates = [], []
    for _ in range(args.rounds):
        fast_rates.append(fast_round())
        reference_rates.append(reference_round())
    ratios = [f / r for f, r in zip(fast_rates, reference_rates)]
    return {
        "fast_pipeline_images_per_s": float(np.median(fast_rates)),
        "reference_pipeline_images_per_s": float(np.median(reference_rates)),
        "pipeline_fast_over_reference": float(np.median(ratios)),
        "pipeline_ratio_range": [float(min(ratios)), float(max(ratios))],
        "pipeline_rounds": args.rounds,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the reference (the paper's: 32)")
    parser.add_argument(
        "--fast-batch-size", type=int, default=None, help="batch size of the fast path and roof (default: --batch-size)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers of the reference"
    )
    parser.add_argument(
        "--pipeline-steps",
        type=int,
        default=None,
        help="timed batches per round of the pipelines-only measurement (default: --steps)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the pipelines-only measurement")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path and the roof")
    parser.add_argument(
        "--roof-batch-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also measure the roof at these batch sizes (roof_<n>_samples_per_s), e.g. 256",
    )
    parser.add_argument(
        "--step-graph", action="store_true", help="also measure the fast path with --model.step_graph true (graph_...)"
    )
    parser.add_argument(
        "--graph-backend", default="inductor", help="torch.compile backend of the graph step (aot_eager: a quick check)"
    )
    parser.add_argument("--graph-warmup", type=int, default=10, help="untimed steps of the graph step (it compiles)")
    parser.add_argument(
        "--fast-batch-sizes",
        type=int,
        nargs="*",
        default=[],
        help="also measure the fast path (and the graph step) at these batch sizes (fast_<n>_samples_per_s)",
    )
    parser.add_argument("--data-root", default=None, help="a RAF-DB copy; default: a synthetic one")
    parser.add_argument("--synthetic-images", type=int, default=2000, help="training images of the synthetic RAF-DB")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.fast_batch_size = args.fast_batch_size or args.batch_size
    args.pipeline_steps = args.pipeline_steps or args.steps
    device = torch.device(args.device)
    torch.manual_seed(0)
    random.seed(0)

    if args.data_root:
        root = Path(args.data_root)
    else:
        root = write_rafdb(
            Path(tempfile.mkdtemp()) / "rafdb", train_per_class=args.synthetic_images // 7, test_per_class=1, size=100
        )

    fast, fast_peak = measure_fast(args, root, device)
    more_fast = {f"fast_{n}_samples_per_s": measure_fast(args, root, device, n)[0] for n in args.fast_batch_sizes}
    graph_rows = [
        (n, measure_fast(args, root, device, n, step_graph=True)[0])
        for n in ([args.fast_batch_size, *args.fast_batch_sizes] if args.step_graph else [])
    ]
    graphs = {
        ("graph_samples_per_s" if n == args.fast_batch_size else f"graph_{n}_samples_per_s"): value
        for n, value in graph_rows
    }
    reference = measure_reference(args, root, device)
    roof = measure_roof(args, device)
    more_roofs = {f"roof_{n}_samples_per_s": measure_roof(args, device, n) for n in args.roof_batch_sizes}
    pipelines = measure_pipelines(args, root, device)
    results = {
        "device": device_name(device),
        "data": str(args.data_root or "synthetic RAF-DB, 100x100 JPEGs"),
        "batch_size": args.batch_size,
        "fast_batch_size": args.fast_batch_size,
        "image_size": args.image_size,
        "steps": args.steps,
        "workers": args.workers,
        "compile": args.compile,
        "graph_backend": args.graph_backend if args.step_graph else None,
        "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
        "fast_samples_per_s": fast,
        "reference_samples_per_s": reference,
        "roof_samples_per_s": roof,
        **more_fast,
        **graphs,
        **more_roofs,
        "fast_peak_mem_mb": fast_peak,
        "fast_peak_mem_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        **pipelines,
        "fast_over_reference": fast / reference,
        "fast_over_roof": fast / roof,
        **({"graph_over_fast": graphs["graph_samples_per_s"] / fast} if graphs else {}),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    print(
        f"\ndevice: {results['device']}  image {args.image_size}px  reference batch {args.batch_size}, "
        f"fast batch {args.fast_batch_size}, {args.steps} timed steps"
    )
    print(f"{'measurement':<42}{'per second':>12}")
    for label, value in [
        ("(a) fast path, samples (image + mirror)", fast),
        *[(f"(a) fast path at batch {key.split('_')[1]}, samples", value) for key, value in more_fast.items()],
        *[(f"(a') graph step at batch {batch}, samples", value) for batch, value in graph_rows],
        ("(b) official-style reference, samples", reference),
        ("(c) roof: model alone, samples", roof),
        *[(f"(c) roof at batch {key.split('_')[1]}, samples", value) for key, value in more_roofs.items()],
        ("(d) fast data pipeline alone, images", pipelines["fast_pipeline_images_per_s"]),
        ("(d) reference data pipeline alone, images", pipelines["reference_pipeline_images_per_s"]),
    ]:
        print(f"{label:<42}{value:>12.1f}")
    low, high = pipelines["pipeline_ratio_range"]
    print(
        f"fast / reference = {fast / reference:.2f}x   fast / roof = {fast / roof:.1%}   "
        f"fast peak memory {fast_peak:.0f} MB"
    )
    print(
        f"pipeline fast / reference = {pipelines['pipeline_fast_over_reference']:.2f}x "
        f"(median of {args.rounds} interleaved rounds, range {low:.2f}-{high:.2f})"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
