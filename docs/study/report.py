"""The from-scratch study's report: per run, the accuracy of every epoch and what the loss did (the NAW weight per
branch of eq. 4, the share of training samples in the false branch, the gradient that reaches the logits through
the weight, the entropy of the predictions), from the runs' ``summary.json`` and CSV logs.

    python docs/study/report.py runs/study/study_scratch --out docs/study/scratch
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure

MECHANISM = {
    "train/false_branch_share": "false-branch share",
    "train/naw_weight_true_branch": "w, true branch",
    "train/naw_weight_false_branch": "w, false branch",
    "train/weight_gradient_norm": "|grad through w|",
    "train/prediction_entropy": "entropy (nats)",
    "train/consistency": "consistency term",
}


def epoch_log(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per epoch, the epoch-level values of the run's CSV logs (a resumed run has several versions)."""
    epochs: dict[int, dict[str, float]] = {}
    for metrics in sorted(run_dir.glob("*/version_*/metrics.csv")):
        with open(metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                values = {key: float(value) for key, value in row.items() if value not in ("", None) and key != "step"}
                if "epoch" in values:
                    epochs.setdefault(int(values.pop("epoch")), {}).update(values)
    return epochs


def collect(grid: Path) -> list[dict]:
    cells = []
    for summary in sorted(grid.glob("*/*/seed*/summary.json")):
        run_dir = summary.parent
        protocol, method, seed = run_dir.parts[-3], run_dir.parts[-2], run_dir.name
        data = json.loads(summary.read_text())
        timing = json.loads((run_dir / "runner.json").read_text()) if (run_dir / "runner.json").is_file() else {}
        cells.append(
            {
                "protocol": protocol,
                "method": method,
                "seed": seed,
                "summary": data,
                "log": epoch_log(run_dir),
                "wall_min": timing.get("wall_s", math.nan) / 60,
            }
        )
    return cells


def left_majority(summary: dict) -> int | None:
    """The first epoch (1-based) whose mean accuracy is clearly above the 1/7 of predicting one class."""
    return next((e["epoch"] + 1 for e in summary["epochs"] if e["mean_acc"] > 1 / 7 + 0.02), None)


def write(cells: list[dict], out: Path, heading: str = "From scratch") -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| protocol | method | seed | acc per epoch (%) | mean acc per epoch (%) | left one class at epoch | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        epochs = cell["summary"]["epochs"]
        acc = " ".join(f"{100 * e['acc']:.1f}" for e in epochs)
        mean = " ".join(f"{100 * e['mean_acc']:.1f}" for e in epochs)
        lines.append(
            f"| {cell['protocol']} | {cell['method']} | {cell['seed']} | {acc} | {mean} | "
            f"{left_majority(cell['summary']) or 'never'} | {cell['wall_min']:.0f} |"
        )
    lines += ["", "What the loss did, per epoch (training-set means):", ""]
    for key, title in MECHANISM.items():
        lines += [f"**{title}**", "", "| protocol | method | seed | per epoch |", "|---|---|---|---|"]
        for cell in cells:
            values = [cell["log"][e].get(key) for e in sorted(cell["log"])]
            if any(v is not None for v in values):
                shown = " ".join("—" if v is None else f"{v:.3g}" for v in values)
                lines.append(f"| {cell['protocol']} | {cell['method']} | {cell['seed']} | {shown} |")
        lines.append("")
    (out / "per_epoch.md").write_text("\n".join(lines))
    with open(out / "per_epoch.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["protocol", "method", "seed", "epoch", "val_acc", "val_mean_acc", *MECHANISM])
        for cell in cells:
            accuracy = {e["epoch"]: e for e in cell["summary"]["epochs"]}
            for epoch in sorted(cell["log"]):
                record = accuracy.get(epoch, {})
                writer.writerow(
                    [
                        cell["protocol"],
                        cell["method"],
                        cell["seed"],
                        epoch,
                        record.get("acc", ""),
                        record.get("mean_acc", ""),
                        *[cell["log"][epoch].get(key, "") for key in MECHANISM],
                    ]
                )
    for protocol in sorted({c["protocol"] for c in cells}):
        chosen = [c for c in cells if c["protocol"] == protocol]
        figure = Figure(figsize=(12, 3.4))
        panels = [
            ("val/mean_acc", "mean accuracy (test split)"),
            ("train/false_branch_share", "false-branch share"),
            ("train/prediction_entropy", "prediction entropy (nats)"),
        ]
        for k, (key, title) in enumerate(panels):
            axis = figure.add_subplot(1, 3, k + 1)
            for cell in chosen:
                epochs = sorted(cell["log"])
                values = [cell["log"][e].get(key, math.nan) for e in epochs]
                axis.plot([e + 1 for e in epochs], values, marker=".", label=f"{cell['method']} {cell['seed']}")
            axis.set(title=title, xlabel="epoch")
        axis.legend(fontsize=6, ncol=1, loc="best")
        figure.suptitle(f"{heading}, {protocol}", fontsize=10)
        figure.tight_layout()
        figure.savefig(out / f"{protocol}.png", dpi=80)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="an nla experiment's output folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="From scratch", help="the figures' title, before the protocol")
    args = parser.parse_args()
    write(collect(args.grid), args.out, args.title)


if __name__ == "__main__":
    main()
