"""``nla label-issues``: the training images whose labels are probably wrong, ranked by NLA's own judgement.

A trained model looks at every training image (no augmentation) with the label it was trained on. NAW places
the image at ``(p_GT, p_NN)``: an image the model predicts as another class falls in the false branch of eq. 4,
and the further it lies from that branch's kernel, the lower its weight and the more confidently the model
contradicts the label. The ranking puts those images first, the lowest false-branch weight at the top; images
whose prediction agrees with their label follow, least confident first. (The weight alone would not do: the
true-branch kernel sits on the decision boundary, so a confidently right image also gets a low weight.)

It writes ``label_issues.csv`` (every training image: rank, given and suggested label, NAW weight, loss, the
probabilities) and ``label_issues.png`` (the top suspects). When the labels were made noisy by a protocol, the
shipped labels are known, and ``label_issues_vs_truth.json`` measures the ranking against them, beside
cleanlab's ``find_label_issues`` on the same predictions when cleanlab is installed (``pip install cleanlab``).

``--write_labels`` drops or relabels the first suspects: a number of them, every image the model contradicts
(the default), or, per class, as many as confident learning estimates (``confident_learning``: cleanlab's per-class
counts on the same predictions, NAW's ranking choosing which). A weak model contradicts far more labels than are
wrong, most of the minority classes among them; on RAF-DB at 30% noise and CPU scale, the per-class count gave the
better retrained model (docs/study/ambiguity, "Clean, then retrain").
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from nla import losses
from nla.data.files import load_image
from nla.data.protocols import write_label_file
from nla.errors import UserError
from nla.rundir import free_path

CleanHow = Literal["drop", "relabel"]
SuspectCount = Union[int, Literal["contradicted", "confident_learning"]]

HELP = "Rank the training images whose labels are probably wrong, by the NAW weight of a trained model"


@dataclass
class Ranking:
    """Per training image: the suspicion score (higher: more likely mislabelled), the NAW weight and the loss."""

    score: np.ndarray
    weight: np.ndarray
    loss: np.ndarray
    suggested: np.ndarray
    prediction_true: np.ndarray

    @property
    def order(self) -> np.ndarray:
        """Indices, most suspicious first (stable, so ties keep their dataset order)."""
        return np.argsort(-self.score, kind="stable")


def rank(
    probs: Tensor, labels: Tensor, kernels: losses.NAWKernels = losses.NAWKernels(), schedule: float = 1.0
) -> Ranking:
    """NLA's ranking of possible label errors from predicted probabilities and given labels.

    Score: ``1 + (1 - w / w_peak)`` for an image whose prediction is false (in [1, 2); ``w_peak`` is the false
    kernel's density at its mean), ``1 - p_GT`` for one whose prediction is true (below 1).
    """
    probs = probs.double()
    weight = losses.naw_weight(probs, labels, schedule, kernels).numpy()
    true = losses.prediction_true(probs, labels).numpy()
    p_gt = probs.gather(1, labels[:, None]).squeeze(1).numpy()
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="none")
    return Ranking(suspicion(p_gt, weight, true, kernels), weight, loss.numpy(), probs.argmax(1).numpy(), true)


def suspicion(
    p_gt: np.ndarray, weight: np.ndarray, true: np.ndarray, kernels: losses.NAWKernels = losses.NAWKernels()
) -> np.ndarray:
    """:func:`rank`'s score from each image's ``p_GT``, NAW weight and whether its prediction is true (any shape,
    e.g. epochs x images of :class:`nla.callbacks.SampleRecord`)."""
    (a, b), (c, d) = losses.kernel_covariance(kernels.false_major_std, kernels.false_axis_ratio, +1)
    peak = 1.0 / (2.0 * math.pi * math.sqrt(a * d - b * c))  # the false kernel's density at its mean
    return np.where(true, 1.0 - p_gt, 2.0 - weight / peak)


def scores_against_truth(score: np.ndarray, flipped: np.ndarray, count: Optional[int] = None) -> dict[str, float]:
    """Precision, recall and F1 of the top ``count`` (default: the number of flipped labels), and the AUROC."""
    count = int(flipped.sum()) if count is None else count
    top = np.argsort(-score, kind="stable")[:count]
    hits = int(flipped[top].sum())
    precision, recall = hits / max(count, 1), hits / max(int(flipped.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auroc = binary_auroc(torch.as_tensor(score), torch.as_tensor(flipped.astype(np.int64))).item()
    return {"flagged": count, "precision": precision, "recall": recall, "f1": f1, "auroc": auroc}


def cleanlab_scores(
    probs: np.ndarray, labels: np.ndarray, flipped: np.ndarray
) -> Optional[dict[str, dict[str, float]]]:
    """cleanlab on the same predictions: its label-quality ranking at the flipped count, and ``find_label_issues``
    with the number of issues it estimates itself; ``None`` without cleanlab."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        return None
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    found = find_label_issues(labels, probs, n_jobs=1)  # see confident_learning_counts
    hits = int((found & flipped).sum())
    precision, recall = hits / max(int(found.sum()), 1), hits / max(int(flipped.sum()), 1)
    return {
        "cleanlab ranking (self-confidence), top flipped count": scores_against_truth(-quality, flipped),
        "cleanlab find_label_issues (its own count)": {
            "flagged": int(found.sum()),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "auroc": scores_against_truth(-quality, flipped)["auroc"],
        },
    }


def suspects_figure(paths: list[str], given: list[str], suggested: list[str], columns: int = 6) -> Figure:
    rows = math.ceil(len(paths) / columns)
    figure = Figure(figsize=(1.9 * columns, 2.2 * rows))
    for i, (path, label, guess) in enumerate(zip(paths, given, suggested)):
        axis = figure.add_subplot(rows, columns, i + 1)
        axis.imshow(load_image(path))
        axis.set_title(f"{i + 1}. {label}\n-> {guess}", fontsize=8)
        axis.axis("off")
    figure.suptitle("Most likely mislabelled: given label -> the model's", fontsize=10)
    figure.tight_layout()
    return figure


def first_per_class(order: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The first ``counts[c]`` images of ``order`` among those labelled ``c``, for every class ``c``, in ranking
    order."""
    taken = np.zeros(len(counts), dtype=np.int64)
    chosen = []
    for i in order:
        if taken[labels[i]] < counts[labels[i]]:
            taken[labels[i]] += 1
            chosen.append(i)
    return np.asarray(chosen, dtype=np.int64)


def confident_learning_counts(probs: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """How many label issues confident learning finds in each class (cleanlab's ``find_label_issues``)."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: cleanlab's process pool, forked from this process (torch threads), once hung on a queue lock
    found = find_label_issues(labels, probs, n_jobs=1)
    return np.bincount(labels[found], minlength=classes)


def choose_suspects(ranking: Ranking, probs: np.ndarray, labels: np.ndarray, suspects: SuspectCount) -> np.ndarray:
    """The images ``--write_labels`` cleans, most suspicious first: the ranking's first ``suspects`` (a number),
    every image the model contradicts (``contradicted``; they head the ranking) or the first of each class in the
    numbers confident learning estimates (``confident_learning``)."""
    order = ranking.order
    if suspects == "contradicted":
        return order[: int((~ranking.prediction_true).sum())]
    if suspects == "confident_learning":
        return first_per_class(order, labels, confident_learning_counts(probs, labels, probs.shape[1]))
    return order[: min(int(suspects), len(order))]


def cleaned_labels(
    labels: np.ndarray, suggested: np.ndarray, chosen: np.ndarray, how: CleanHow
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, labels)`` after cleaning: the ``chosen`` images dropped (``drop``) or given the ``suggested`` label
    (``relabel``); ``kept`` indexes the images that stay, in their order."""
    if how == "drop":
        kept = np.setdiff1d(np.arange(len(labels)), chosen)
        return kept, labels[kept]
    cleaned = labels.copy()
    cleaned[chosen] = suggested[chosen]
    return np.arange(len(labels)), cleaned


def run(
    trainer: Trainer,
    model: Any,
    datamodule: Any,
    ckpt_path: str,
    top: int = 36,
    write_labels: Optional[CleanHow] = None,
    suspects: SuspectCount = "contradicted",
) -> dict[str, Any]:
    """Rank every training image of ``datamodule`` by the model of ``ckpt_path``; write the CSV, the figure and,
    when the shipped labels are known to differ from the training ones, the comparison with them. With
    ``write_labels``, also ``cleaned_labels.txt``: the training labels with the ``suspects`` (:func:`choose_suspects`)
    dropped or relabelled, in the dataset's own label file format."""
    loader = datamodule.eval_dataloader("train")
    images = len(datamodule.splits["train"])
    if write_labels == "drop" and isinstance(suspects, int) and suspects >= images:
        raise UserError(f"--suspects {suspects} would drop every one of the {images} training images; give fewer")
    # A trainer of its own, on the same device and precision, without the command's callbacks (no predictions.csv).
    applier = Trainer(
        accelerator=trainer.accelerator,
        devices=1,
        precision=trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=trainer.default_root_dir,
        enable_progress_bar=trainer.progress_bar_callback is not None,
    )
    with warnings.catch_warnings():  # the applier leaves out the fit's callbacks on purpose; only weights are read
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks")
        predicted: Any = applier.predict(
            model, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=True, weights_only=True
        )
    samples = datamodule.splits["train"]
    probs = torch.cat([p["probs"] for p in predicted])
    index = torch.cat([torch.as_tensor(p["index"]) for p in predicted])
    order = torch.argsort(index)
    probs, index = probs[order], index[order]
    labels = torch.as_tensor(samples.labels)[index]
    ranking = rank(probs, labels, model.criterion.config.kernels)
    probabilities = probs.double().numpy()  # what cleanlab reads
    names = list(model.class_names)
    folder = Path(trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    shipped = samples.shipped_labels[index.numpy()]
    noisy = bool((shipped != labels.numpy()).any())
    csv_path = folder / "label_issues.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = [
            "rank",
            "path",
            "name",
            "given_label",
            "suggested_label",
            "naw_weight",
            "loss",
            "prob_given",
            "prob_suggested",
            "prediction_agrees",
        ]
        writer.writerow(header + (["shipped_label", "label_was_changed"] if noisy else []))
        for position, i in enumerate(ranking.order, start=1):
            k = int(index[i])
            row = [
                position,
                samples.paths[k],
                samples.names[k],
                names[int(labels[i])],
                names[int(ranking.suggested[i])],
                f"{ranking.weight[i]:.6f}",
                f"{ranking.loss[i]:.6f}",
                f"{probs[i, labels[i]]:.6f}",
                f"{probs[i].max():.6f}",
                bool(ranking.prediction_true[i]),
            ]
            writer.writerow(row + ([names[int(shipped[i])], bool(shipped[i] != labels[i])] if noisy else []))
    top_indices = ranking.order[:top]
    figure = suspects_figure(
        [samples.paths[int(index[i])] for i in top_indices],
        [names[int(labels[i])] for i in top_indices],
        [names[int(ranking.suggested[i])] for i in top_indices],
    )
    figure.savefig(folder / "label_issues.png", dpi=110)
    result: dict[str, Any] = {"images": len(samples), "csv": str(csv_path), "figure": str(folder / "label_issues.png")}
    if write_labels is not None:
        chosen = choose_suspects(ranking, probabilities, labels.numpy(), suspects)
        kept, cleaned = cleaned_labels(labels.numpy(), ranking.suggested, chosen, write_labels)
        if not len(kept):
            raise UserError(f"--suspects {suspects} chose every training image: no label file with nothing to train on")
        names_kept = [samples.names[int(index[i])] for i in kept]
        path = write_label_file(
            free_path(folder / "cleaned_labels.txt"), names_kept, cleaned, getattr(datamodule, "label_code_offset", 0)
        )
        result["cleaned"] = {"file": str(path), "how": write_labels, "suspects": len(chosen), "kept": len(kept)}
        left = set(cleaned.tolist())
        emptied = [names[code] for code in sorted(set(labels.numpy().tolist()) - left)]
        if emptied:  # a fit on this file stops at once: say so now, beside the file
            result["cleaned"]["classes_left_empty"] = emptied
            rank_zero_warn(
                f"{path} keeps no image of {emptied}: a fit on it stops (every class needs one); drop fewer "
                "(--suspects) or --write_labels relabel"
            )
    if noisy:
        flipped = shipped != labels.numpy()
        result["vs_truth"] = {
            "labels_changed": int(flipped.sum()),
            "nla (NAW) ranking, top flipped count": scores_against_truth(ranking.score, flipped),
        }
        compared = cleanlab_scores(probabilities, labels.numpy(), flipped)
        if compared is not None:
            result["vs_truth"].update(compared)
        (folder / "label_issues_vs_truth.json").write_text(json.dumps(result["vs_truth"], indent=2))
    record = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "input": datamodule.preprocessing.to_dict(),
        **{key: value for key, value in result.items() if key != "vs_truth"},
    }
    (folder / "label_issues.json").write_text(json.dumps(record, indent=2))
    return result
