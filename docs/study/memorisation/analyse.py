"""Which training images NAW weights down, and which the model fits, per class and epoch, in the memorisation study.

Reads each noisy run's ``per_sample.npz`` (written by ``nla.callbacks.SampleRecord``: per epoch and training image,
the NAW weight, p(given label) and the prediction) and ``train_labels.txt`` (the given, flipped labels), takes the
true labels from RAF-DB's clean list, and writes a markdown table: per given class, among the images whose label is
right, the share the model predicts as that label ("fit") and their mean weight; among the flipped ones, their
mean weight.

    python docs/study/memorisation/analyse.py /path/to/grid/noise-30pct \\
        --labels /path/to/RAF-DB/basic/EmoLabel/list_patition_label.txt --out docs/study/memorisation/per_class.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


def true_labels(list_file: Path) -> dict[str, int]:
    """RAF-DB's clean training labels, 0-based."""
    pairs = (line.split() for line in list_file.read_text().splitlines() if line.strip())
    return {name: int(code) - 1 for name, code in pairs if name.startswith("train")}


def run_table(run_dir: Path, truth: dict[str, int], epochs: list[int]) -> list[str]:
    names = [line.split()[0] for line in (run_dir / "train_labels.txt").read_text().splitlines() if line.strip()]
    true = np.array([truth[name] for name in names])
    record = np.load(run_dir / "per_sample.npz")
    given = record["label"][0].astype(int)
    flipped = given != true
    rows = []
    for epoch in epochs:
        if epoch > len(record["label"]) or (record["label"][epoch - 1] < 0).all():
            continue  # a running run's record marks the epochs it has not trained yet with label -1
        weight, predicted = record["weight"][epoch - 1], record["predicted"][epoch - 1]
        cells = []
        for k in range(len(CLASSES)):
            right, wrong = (~flipped) & (given == k), flipped & (given == k)
            cells.append(
                f"{100 * (predicted[right] == k).mean():.0f} / {weight[right].mean():.2f} / {weight[wrong].mean():.2f}"
            )
        rows.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol_dir", type=Path, help="a protocol folder of the grid, e.g. <grid>/noise-30pct")
    parser.add_argument("--labels", type=Path, required=True, help="RAF-DB's list_patition_label.txt")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    truth = true_labels(args.labels)
    lines = [
        f"# Per class: fit and NAW weight of the training images (seed {args.seed})",
        "",
        "Each cell: % of the correctly labelled training images of that given class that the model predicts as it "
        "(fit) / their mean NAW weight / the mean NAW weight of the flipped images given that class. From each run's "
        "per_sample.npz (the training steps' own outputs); made by `docs/study/memorisation/analyse.py`.",
    ]
    for run_dir in sorted(args.protocol_dir.glob(f"*/seed{args.seed}")):
        if not (run_dir / "per_sample.npz").is_file():
            continue
        lines += [
            "",
            f"## {run_dir.parent.name}",
            "",
            "| epoch | " + " | ".join(CLASSES) + " |",
            "|---" * (len(CLASSES) + 1) + "|",
        ]
        lines += run_table(run_dir, truth, args.epochs)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
