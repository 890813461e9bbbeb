"""What the loss does over an epoch, measured from the training steps' own outputs without a host wait per step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from nla.criterion import Criterion, CriterionOutput


class MechanismMeter(nn.Module):
    """Per-epoch means of what the loss does, summed on the device as training goes (a handful of kernels a step and
    no host wait) and read once per epoch: the loss and its parts, the share of samples in eq. 4's false branch, the
    entropy of the predictions, the NAW weight (over all samples, and per branch), and the norm of the gradient that
    reaches the logits through ``w`` on the steps where it is measured.

    Means are per sample over the epoch (a branch's weight: over that branch's samples of the whole epoch).
    """

    sums: Tensor

    #: What each slot of :attr:`sums` holds: the loss and its parts times the batch size, then sums over samples
    #: (of the true-branch indicator, of sum_k p log p, and of the weight in each branch), the samples, and the
    #: measured gradient norms.
    SLOTS = (
        "loss",
        "classification",
        "consistency",
        "true",
        "p_log_p",
        "weight_true",
        "weight_false",
        "samples",
        "gradient_norm",
        "gradient_steps",
    )

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("sums", torch.zeros(len(self.SLOTS)), persistent=False)

    def reset(self) -> None:
        self.sums.zero_()

    def update(self, output: CriterionOutput) -> None:
        """Add one step's samples (the ``output`` of :class:`Criterion`): about ten operations, each a kernel launch
        on a GPU, so the per-sample figures are stacked and summed at once."""
        prediction = output.prediction_true
        n = len(prediction)
        log_probs = output.log_probs if output.log_probs is not None else output.probs.clamp_min(1e-12).log()
        true = prediction.to(self.sums.dtype)
        per_sample = [true, (output.probs * log_probs).sum(dim=1)]
        if output.weights is not None:
            weight_true = output.weights.detach() * true
            per_sample += [weight_true, output.weights.detach() - weight_true]  # exact: w - w or w - 0
        parts = torch.stack([output.total.detach(), output.classification.detach(), output.consistency.detach()])
        self.sums[:3].add_(parts, alpha=n)
        self.sums[3 : 3 + len(per_sample)].add_(torch.stack(per_sample).sum(dim=1))
        self.sums[7].add_(n)

    def add_gradient_norm(self, norm: Tensor) -> None:
        """One measured step's :meth:`Criterion.weight_gradient_norm`."""
        self.sums[8:].add_(torch.stack([norm.detach().to(self.sums.dtype), norm.new_ones((), dtype=self.sums.dtype)]))

    def observe(self, criterion: Criterion, output: CriterionOutput, labels: Tensor, gradient_norm: bool) -> None:
        """Add one eager step; with ``gradient_norm``, also the norm of the gradient through ``w`` (a second
        backward pass through the logits, so only on some steps)."""
        self.update(output)
        if gradient_norm and output.logits is not None:
            norm = criterion.weight_gradient_norm(output.logits, output, labels)
            if norm is not None:
                self.add_gradient_norm(norm)

    def means(self, naw: bool, summed: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Tensor]:
        """The epoch's means, by the names ``train/...`` the loggers show (NAW's only with ``naw``); ``summed``, in a
        run of several processes, sums a tensor over them (the means are then the whole epoch's, not one process's)."""
        sums = self.sums if summed is None else summed(self.sums.clone())
        slot = {name: sums[i] for i, name in enumerate(self.SLOTS)}
        samples = slot["samples"].clamp_min(1)
        false = slot["samples"] - slot["true"]
        logged = {
            "train/loss_epoch": slot["loss"] / samples,
            "train/classification": slot["classification"] / samples,
            "train/consistency": slot["consistency"] / samples,
            "train/false_branch_share": false / samples,
            "train/prediction_entropy": -slot["p_log_p"] / samples,
        }
        if naw:
            logged["train/naw_weight"] = (slot["weight_true"] + slot["weight_false"]) / samples
            logged["train/naw_weight_true_branch"] = slot["weight_true"] / slot["true"].clamp_min(1)
            logged["train/naw_weight_false_branch"] = slot["weight_false"] / false.clamp_min(1)
            if slot["gradient_steps"]:  # one host read an epoch; no step measured it in the graph step
                logged["train/weight_gradient_norm"] = slot["gradient_norm"] / slot["gradient_steps"]
        return {name: value.float() for name, value in logged.items()}
