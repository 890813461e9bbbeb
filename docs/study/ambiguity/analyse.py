"""Does NAW's weight see label ambiguity? Its rank correlation with FER+'s ten annotators' disagreement.

For every run of ``configs/experiments/ambiguity_ferplus.yaml`` (CE, the official preset and the from-scratch recipe
on FER+ at CPU scale, three seeds) it applies the last checkpoint to every training and test image (no augmentation)
and compares, image by image, with the annotators' votes:

- ambiguity: the entropy of the eight emotions' vote shares (bits; 0 when all agree), and the majority's share;
- per image from the model: NAW's weight ``w`` at the last epoch's kernel (for CE, the weight NAW would give), and
  the plain baselines ``p_GT``, the margin ``p_GT - p_NN`` and the entropy of the prediction;
- from training itself: the weight ``w`` each training image had in the last epoch, and its mean over the last three
  (``per_sample.npz`` of ``nla.callbacks.SampleRecord``).

Spearman's rho over all images and within each majority class; figures of ``w`` against the vote entropy.

    python docs/study/ambiguity/analyse.py --runs runs/experiments/ambiguity_ferplus --data-root /path/to/FERPlus
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from nla import NLAModule, losses
from nla.callbacks import machine
from nla.data import FERPlusDataModule
from nla.data.sources import ferplus
from nla.data.upgrade import upgrade_settings
from nla.preprocessing import Preprocessing

HERE = Path(__file__).resolve().parent
METHODS = {"ce": "CE", "nla-official": "NLA official", "nla-from_scratch": "NLA from_scratch"}
SIGNALS = ("naw_weight", "p_gt", "margin", "prediction_entropy")
AMBIGUITY = ("vote_entropy", "majority_share")


def vote_ambiguity(votes: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Entropy (bits) of the eight emotions' vote shares, and the largest share."""
    emotions = np.asarray(votes, dtype=np.float64)[:, :8]
    shares = emotions / emotions.sum(1, keepdims=True).clip(min=1)
    logs = np.log2(shares, out=np.zeros_like(shares), where=shares > 0)
    return -(shares * logs).sum(1), shares.max(1)


def apply(run_dir: Path, data_root: str, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor, object]:
    """Names, probabilities and labels of one split under the run's last checkpoint, and the model. The probabilities
    are kept beside the checkpoint (``ambiguity-<split>.pt``) and reused while the checkpoint is the same file."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    model = NLAModule.load_from_checkpoint(checkpoint, weights_only=True, map_location="cpu").eval()
    kept, stamp = run_dir / f"ambiguity-{split}.pt", [checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns]
    if kept.is_file():
        saved = torch.load(kept, weights_only=True)
        if saved["checkpoint"] == stamp:
            return saved["names"], saved["probs"], saved["labels"], model
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")["datamodule_hyper_parameters"]
    # No DataLoader workers: forked workers of this long-lived process twice blocked forever inside cv2.imdecode
    # on a lock they inherited (gdb); unexplained, see the issue notes.
    preprocessing = Preprocessing(**upgrade_settings(saved)["preprocessing"])  # as the run was trained
    data = FERPlusDataModule(data_root, preprocessing=preprocessing, num_workers=0, batch_size=256)
    loader = data.eval_dataloader(split)
    probs, labels = [], []
    with torch.no_grad():
        for batch in loader:
            probs.append(model(batch.image).float().softmax(1))
            labels.append(batch.label)
    names, all_probs, all_labels = list(data.splits[split].names), torch.cat(probs), torch.cat(labels)
    torch.save({"checkpoint": stamp, "names": names, "probs": all_probs, "labels": all_labels}, kept)
    return names, all_probs, all_labels, model


def signals(probs: torch.Tensor, labels: torch.Tensor, model: object, epochs: int) -> dict[str, np.ndarray]:
    criterion = model.criterion  # type: ignore[attr-defined]
    schedule = criterion.schedule(epochs - 1, epochs)
    weight = losses.naw_weight(probs.double(), labels, schedule, criterion.config.kernels)
    p_gt = probs.gather(1, labels[:, None]).squeeze(1)
    p_nn = losses.nearest_negative(probs, labels)
    return {
        "naw_weight": weight.numpy(),
        "p_gt": p_gt.numpy(),
        "margin": (p_gt - p_nn).numpy(),
        "prediction_entropy": losses.prediction_entropy(probs).numpy(),
    }


def rho(a: np.ndarray, b: np.ndarray) -> float:
    value = spearmanr(a, b).statistic
    return float(value) if value == value else math.nan  # NaN where one side is constant


def correlations(found: dict[str, np.ndarray], ambiguity: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    table: dict = {}
    for signal, values in found.items():
        table[signal] = {kind: rho(values, amb) for kind, amb in ambiguity.items()}
        table[signal]["per_class_vote_entropy"] = {
            ferplus.CLASSES_8[k]: rho(values[labels == k], ambiguity["vote_entropy"][labels == k])
            for k in range(8)
            if (labels == k).sum() > 10
        }
    return table


def figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> Figure:
    """NAW weight against vote entropy: the median and quartiles in bins of entropy, one panel per method."""
    fig = Figure(figsize=(4.2 * len(curves), 3.6))
    edges = np.linspace(0, 3, 13)
    for i, (method, (entropy, weight)) in enumerate(curves.items()):
        axis = fig.add_subplot(1, len(curves), i + 1)
        middle, q1, q2, q3 = [], [], [], []
        for low, high in itertools.pairwise(edges):
            inside = weight[(entropy >= low) & (entropy < high)]
            if len(inside) >= 20:
                middle.append((low + high) / 2)
                a, b, c = np.percentile(inside, [25, 50, 75])
                q1.append(a), q2.append(b), q3.append(c)
        axis.fill_between(middle, q1, q3, alpha=0.3)
        axis.plot(middle, q2, marker="o")
        axis.set(title=method, xlabel="vote entropy (bits)", ylabel="NAW weight w" if i == 0 else None)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the experiment's folder, runs/experiments/ambiguity_ferplus")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    out = Path(args.out)
    votes = {split: ferplus.read_votes(args.data_root, split) for split in ("train", "test")}
    results: dict = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"train": {}, "test": {}}
    for slug, method in METHODS.items():
        for run_dir in sorted((Path(args.runs) / "clean" / slug).glob("seed*")):
            if not (run_dir / "summary.json").is_file():
                continue
            seed = run_dir.name
            epochs = json.loads((run_dir / "summary.json").read_text())["last"]["epoch"] + 1
            for split in ("train", "test"):
                names, probs, labels, model = apply(run_dir, args.data_root, split)
                entropy, share = vote_ambiguity([votes[split][name] for name in names])
                ambiguity = {"vote_entropy": entropy, "majority_share": share}
                found = signals(probs, labels, model, epochs)
                if split == "train":
                    with np.load(run_dir / "per_sample.npz") as record:
                        found["naw_weight_in_training"] = record["weight"][-1]
                        found["naw_weight_last_3_epochs"] = np.nanmean(record["weight"][-3:], axis=0)
                table = correlations(found, ambiguity, labels.numpy())
                results.setdefault(method, {}).setdefault(split, {})[seed] = table
                if seed == "seed0":
                    curves[split][method] = (entropy, found["naw_weight"])
                print(method, seed, split, {s: round(t["vote_entropy"], 3) for s, t in table.items()})
    out.mkdir(parents=True, exist_ok=True)
    record = {"environment": machine(), **results}  # each run's own is in its summary.json
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    for split, by_method in curves.items():
        if by_method:
            title = f"FER+ {split} images: NAW weight of the last checkpoint against the annotators' vote entropy"
            figure(by_method, title).savefig(out / f"naw-vs-vote-entropy-{split}.png", dpi=110)
    write_table(results, out / "results.md")


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:+.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:+.3f}"


def write_table(results: dict, path: Path) -> None:
    lines = ["# NAW against FER+'s annotators: Spearman's rho, mean ± std over seeds", ""]
    for split in ("train", "test"):
        for kind in AMBIGUITY:
            lines += [f"## {split} images, against {kind.replace('_', ' ')}", ""]
            signal_names = [*SIGNALS] + (
                ["naw_weight_in_training", "naw_weight_last_3_epochs"] if split == "train" else []
            )
            lines += ["| method | " + " | ".join(signal_names) + " |", "|" + "---|" * (len(signal_names) + 1)]
            for method, by_split in results.items():
                seeds = by_split.get(split, {})
                cells = [mean_std([seeds[s][signal][kind] for s in seeds]) for signal in signal_names]
                lines.append(f"| {method} ({len(seeds)} seeds) | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"## {split} images, NAW weight against vote entropy within each majority class", ""]
        classes = list(ferplus.CLASSES_8)
        lines += ["| method | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
        for method, by_split in results.items():
            seeds = by_split.get(split, {})
            cells = [
                mean_std([seeds[s]["naw_weight"]["per_class_vote_entropy"].get(c, math.nan) for s in seeds])
                for c in classes
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
