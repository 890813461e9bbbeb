"""What a training epoch does with the labels a noise protocol flipped (:class:`nla.records.NoiseRecord`), from the
outputs training already computes: under label noise a network first fits the images whose labels are right and later
memorises the wrong ones, and these figures show when, and whether NAW's weight could have told the two apart.

Plain functions over one epoch's tensors (probabilities, given and true labels, NAW weights); no Lightning, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from nla.records import NoiseRecord


def detection_auroc(score: Tensor, flipped: Tensor) -> Optional[float]:
    """The AUROC of a low ``score`` as a detector of flipped labels (1: every flipped image scores below every other
    one; 0.5: no better than chance); ``None`` where one of the two groups is empty."""
    if flipped.all() or not flipped.any():
        return None
    return float(binary_auroc(-score.double(), flipped.long()))


def share(hits: Tensor) -> float:
    """The share of true values; NaN for none at all."""
    return float(hits.double().mean()) if len(hits) else float("nan")


def label_noise_record(
    epoch: int, probs: Tensor, given: Tensor, true: Tensor, weights: Tensor
) -> Optional[NoiseRecord]:
    """An epoch's :class:`NoiseRecord` from each training image's probabilities (N x K), its given label (trained on),
    its true label and its NAW weight (the weight NAW gives, or would give); ``None`` where no label was flipped."""
    flipped = given != true
    if not flipped.any():
        return None
    predicted = probs.argmax(dim=1)
    p_given = probs.gather(1, given[:, None]).squeeze(1)
    return NoiseRecord(
        epoch=epoch,
        images=len(given),
        flipped=int(flipped.sum()),
        memorised=share(predicted[flipped] == given[flipped]),
        corrected=share(predicted[flipped] == true[flipped]),
        clean_fit=share(predicted[~flipped] == given[~flipped]),
        auroc_naw_weight=detection_auroc(weights, flipped),
        auroc_p_given=detection_auroc(p_given, flipped),
        weight_flipped=float(weights[flipped].double().mean()),
        weight_clean=float(weights[~flipped].double().mean()) if (~flipped).any() else float("nan"),
    )


class NoiseHistory:
    """A fit's :class:`NoiseRecord` s, one per training epoch (part of the checkpoint), and the true labels of the
    training images they are measured against (``None``: the protocol flipped no label, or the data does not say)."""

    def __init__(self) -> None:
        self.records: list[NoiseRecord] = []
        self.true_labels: Optional[Tensor] = None

    def know(self, datamodule: Any) -> Optional[str]:
        """Take the true labels of a fit's training images from its DataModule (``true_labels``: where the protocol
        flipped some); a note where the DataModule cannot say, ``None`` where it can."""
        true = getattr(datamodule, "true_labels", None)
        self.true_labels = None if true is None else torch.as_tensor(true, dtype=torch.long)
        if datamodule is None or hasattr(datamodule, "true_labels"):
            return None
        return (
            f"{type(datamodule).__name__} does not say which training labels are flipped (true_labels): the "
            "label-noise figures (memorised, corrected, noise AUROC) are left out"
        )

    def measure(
        self, epoch: int, outputs: Callable[[], Optional[dict[str, Tensor]]], say: Callable[[str], Any] = print
    ) -> Optional[NoiseRecord]:
        """Measure ``epoch`` once, from ``outputs()``, its gathered training outputs (probabilities, labels, NAW
        weights, indices); the new record, or ``None`` where there is nothing to measure or the epoch has its record
        already. Batches that do not say which images they hold (``index``) can be measured by no epoch: ``say``
        tells so, once."""
        if self.true_labels is None or any(r.epoch == epoch for r in self.records):
            return None
        gathered = outputs()
        if gathered is None:
            return None
        if "index" not in gathered:
            say("the training batches do not say which images they hold (index): no label-noise figures")
            self.true_labels = None
            return None
        true = self.true_labels[gathered["index"]]
        record = label_noise_record(epoch, gathered["probs"], gathered["labels"], true, gathered["weights"])
        if record is not None:
            self.records.append(record)
        return record

    def to_list(self) -> list[dict[str, Any]]:
        return [record.to_dict() for record in self.records]

    def load(self, records: list[dict[str, Any]]) -> None:
        self.records = [NoiseRecord.from_dict(record) for record in records]
