"""The mathematics of NLA and of the baselines it is compared with, as plain tensor functions.

Nothing here knows about Lightning, configs or files. Equation numbers refer to the AAAI 2025
paper "Navigating Label Ambiguity for Facial Expression Recognition in the Wild"; where the
authors' public code differs from the paper, the defaults follow the code (it produced the published
numbers). :mod:`nla.criterion` assembles eq. 8 from these pieces and holds the two presets;
``docs/method.md`` derives every constant.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nla.errors import ConfigError

Reduction = Literal["sum", "mean"]
JSDDirection = Literal["mixture_to_view", "view_to_mixture"]


@dataclass(frozen=True)
class NAWKernels:
    """The two Gaussian kernels of the NAW weight (eq. 4); the defaults are the authors' code.

    Args:
        true_mean: Mean of the kernel for samples whose prediction is true, on the decision boundary.
        true_major_std: Major std ``s`` of that kernel's ellipse.
        true_axis_ratio: Axis ratio ``r`` of that ellipse; the covariance scheduler stretches it along y = -x.
        true_scale: Scale of the true-prediction weight (``t_lambda`` in the authors' code).
        false_mean: Mean of the kernel for samples whose prediction is false.
        false_major_std: Major std of the false-prediction ellipse (the paper's text: 0.8823, see docs/method.md).
        false_axis_ratio: Axis ratio of the false-prediction ellipse, laid along y = x.
    """

    true_mean: tuple[float, float] = (0.50, 0.50)
    true_major_std: float = 0.8
    true_axis_ratio: float = 2.0
    true_scale: float = 1.0
    false_mean: tuple[float, float] = (0.30, 0.15)
    false_major_std: float = 0.91
    false_axis_ratio: float = 6.0

    def __post_init__(self) -> None:
        for name in ("true_mean", "false_mean"):
            value = getattr(self, name)
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise ConfigError(f"NAW kernel {name}={value!r} must be two finite numbers")
            object.__setattr__(self, name, tuple(value))  # a list, as YAML and JSON give it, hashes as a tuple
            if not all(math.isfinite(value) for value in getattr(self, name)):
                raise ConfigError(f"NAW kernel {name}={getattr(self, name)} must be two finite numbers")
        for name in ("true_major_std", "false_major_std", "true_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"NAW kernel {name}={getattr(self, name)} must be a finite positive number")
        for name in ("true_axis_ratio", "false_axis_ratio"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 1):
                raise ConfigError(f"NAW kernel {name}={getattr(self, name)} must be a finite number of at least 1")


def covariance_schedule(epoch: float, max_epochs: float, slope: float = 15.0) -> float:
    """Eq. 6: CS(e, E) = 1 - exp(-slope * e / E), with ``e`` the 0-based epoch."""
    if max_epochs <= 0:
        raise ValueError(f"max_epochs must be positive, got {max_epochs}")
    return 1.0 - math.exp(-slope * epoch / max_epochs)


Covariance = tuple[tuple[Any, Any], tuple[Any, Any]]  # floats, or 0-d tensors where the scheduler is one


def kernel_covariance(
    major_std: float, axis_ratio: float, orientation: int, coupling: float | Tensor = 1.0
) -> Covariance:
    """The 2x2 covariance of an ellipse with major std ``s`` and axis ratio ``r``.

    Diagonal ``s^2 + (s/r)^2``; off-diagonal ``orientation * (s^2 - (s/r)^2) * coupling``, where
    orientation +1 lays the major axis along y = x and -1 along y = -x. ``coupling`` is the
    covariance scheduler for the true-prediction kernel (a float, or a 0-d tensor on the device: then the
    covariance holds tensors, and a compiled step reads the scheduler's value rather than baking it in).
    """
    if major_std <= 0 or axis_ratio < 1:
        raise ValueError(f"need major_std > 0 and axis_ratio >= 1, got {major_std} and {axis_ratio}")
    major, minor = major_std**2, (major_std / axis_ratio) ** 2
    diag, off = major + minor, orientation * (major - minor) * coupling
    return (diag, off), (off, diag)


def gaussian_kernel(p_gt: Tensor, p_nn: Tensor, mean: Sequence[float], covariance: Covariance) -> Tensor:
    """Eq. 4's bivariate normal density C * exp(-0.5 (q - mu)^T Sigma^-1 (q - mu)) at q = (p_gt, p_nn)."""
    (s11, s12), (s21, s22) = covariance
    det = s11 * s22 - s12 * s21
    dx, dy = p_gt - mean[0], p_nn - mean[1]
    # (q - mu)^T Sigma^-1 (q - mu), with Sigma^-1 = [[s22, -s12], [-s21, s11]] / det.
    mahalanobis = (s22 * dx * dx - (s12 + s21) * dx * dy + s11 * dy * dy) / det
    return torch.exp(-0.5 * mahalanobis) / (2.0 * math.pi * det**0.5)


def nearest_negative(probs: Tensor, targets: Tensor) -> Tensor:
    """p_NN = max over k != y of p[k]: the most probable wrong class (the given class's entry set to -inf by one
    scatter; ``F.one_hot`` and a mask took six operations, two of them host reads of the labels' range on a CPU)."""
    return probs.scatter(1, targets[:, None], float("-inf")).amax(dim=1)


def naw_weight(
    probs: Tensor,
    targets: Tensor,
    schedule: float | Tensor,
    kernels: NAWKernels = NAWKernels(),
    prediction: Optional[Tensor] = None,
) -> Tensor:
    """Noise-aware adaptive weight w* of eq. 4, one per sample, differentiable in ``probs`` (``schedule``: a float, or
    a 0-d tensor; ``prediction``: :func:`prediction_true` where the caller has it).

    Each sample is placed at q = (p_GT, p_NN). A sample whose prediction is true is weighted by the
    kernel centred on the decision boundary, whose covariance the scheduler value ``schedule`` (eq. 6)
    stretches along y = -x; a false prediction is weighted by the kernel along y = x.

    Both kernels' covariances have equal diagonals, so their axes lie along y = x and y = -x: in the coordinates
    p_GT + p_NN and p_GT - p_NN each density is a product of two 1-D Gaussians, and both are evaluated with a handful
    of operations on an N x 2 x 2 tensor (:func:`gaussian_kernel` is the density written out; tests check the two
    agree, values and gradients). p_NN is read at the most probable wrong class: where two wrong classes tie
    exactly, the gradient goes to one of them, not half to each as ``amax``'s would.
    """
    if prediction is None:
        prediction = prediction_true(probs, targets)
    nearest = probs.detach().scatter(1, targets[:, None], float("-inf")).argmax(dim=1)
    q = probs.gather(1, torch.stack([targets, nearest], dim=1))  # N x 2: (p_GT, p_NN)
    along, across, centre, norm = _kernel_coefficients(kernels, schedule, probs)
    # y[n, k, j]: the j-th rotated, whitened coordinate of sample n under kernel k (0: false, 1: true).
    y = torch.addcmul(torch.addcmul(centre, q[:, :1, None], along), q[:, 1:, None], across)
    densities = torch.exp(-y.square().sum(dim=2)) * norm  # N x 2
    return torch.where(prediction, densities[:, 1], densities[:, 0])


def _kernel_coefficients(kernels: NAWKernels, schedule: float | Tensor, like: Tensor) -> tuple[Tensor, ...]:
    """``(along, across, centre, norm)`` with y = p_GT * along + p_NN * across + centre (2 x 2: kernel x axis) and
    each density norm * exp(-|y|^2); made once per device, dtype and scheduler value where that is a float (a tensor
    made from host numbers every step would make a GPU's host wait for the copy)."""
    if isinstance(schedule, Tensor):
        return tuple(_stacked(values, like) for values in _coefficient_values(kernels, schedule))
    return _cached_coefficients(kernels, float(schedule), like.dtype, like.device)


def _stacked(values: Any, like: Tensor) -> Tensor:
    """Nested lists of floats and 0-d tensors as one tensor of ``like``'s dtype and device."""
    if isinstance(values, list):
        return torch.stack([_stacked(value, like) for value in values])
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


@functools.lru_cache(maxsize=32)
def _cached_coefficients(
    kernels: NAWKernels, schedule: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, ...]:
    values = _coefficient_values(kernels, schedule)
    return tuple(torch.tensor(row, dtype=dtype).to(device) for row in values)


def _coefficient_values(kernels: NAWKernels, schedule: Any) -> tuple[list[Any], ...]:
    """The coefficients of :func:`_kernel_coefficients` as numbers (floats, or 0-d tensors for a tensor ``schedule``).

    With Sigma = [[d, o], [o, d]], the exponent -0.5 (q - mu)^T Sigma^-1 (q - mu) is
    -(u^2 / (4 (d + o)) + v^2 / (4 (d - o))) with u = dx + dy and v = dx - dy, and det Sigma = (d + o)(d - o).
    """
    along, across, centre, norm = [], [], [], []
    branches = (
        (kernels.false_mean, kernel_covariance(kernels.false_major_std, kernels.false_axis_ratio, +1), 1.0),
        (
            kernels.true_mean,
            kernel_covariance(kernels.true_major_std, kernels.true_axis_ratio, -1, schedule),
            kernels.true_scale,
        ),
    )
    for mean, ((d, o), _), scale in branches:
        k_sum, k_diff = 0.5 / (d + o) ** 0.5, 0.5 / (d - o) ** 0.5
        along.append([k_sum, k_diff])
        across.append([k_sum, -k_diff])
        centre.append([-(mean[0] + mean[1]) * k_sum, -(mean[0] - mean[1]) * k_diff])
        norm.append(scale / (2.0 * math.pi * ((d + o) * (d - o)) ** 0.5))
    return along, across, centre, norm


def prediction_true(probs: Tensor, targets: Tensor) -> Tensor:
    """Which samples' most probable class is the given label: the branch of eq. 4 they fall in."""
    return probs.argmax(dim=1) == targets


def prediction_entropy(probs: Tensor) -> Tensor:
    """Per-sample entropy of the predicted distribution, in nats (log K for a uniform prediction)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)


# --- per-sample classification losses -------------------------------------------------------


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, log_probs: Optional[Tensor] = None) -> Tensor:
    """Per-sample focal loss (Lin et al. 2017): -(1 - p_y)^gamma log p_y."""
    log_p = (F.log_softmax(logits, dim=1) if log_probs is None else log_probs).gather(1, targets[:, None]).squeeze(1)
    return -((1.0 - log_p.exp()) ** gamma) * log_p


def class_balanced_weights(class_counts: Tensor, beta: float = 0.9999) -> Tensor:
    """Per-class weights from the effective number (Cui et al. 2019): (1 - beta) / (1 - beta^n), summing to K."""
    counts = class_counts.to(torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"class-balanced weights need every class count > 0, got {class_counts.tolist()}")
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * len(counts)).to(torch.float32)


def balanced_softmax_loss(logits: Tensor, targets: Tensor, class_counts: Tensor) -> Tensor:
    """Per-sample Balanced Softmax (Ren et al. 2020): cross-entropy on logits + log(n_k)."""
    log_prior = torch.log(class_counts.to(logits.dtype).clamp_min(1.0))
    return F.cross_entropy(logits + log_prior, targets, reduction="none")


ClassificationLoss = Literal["ce", "focal", "label_smoothing", "class_balanced", "balanced_softmax"]


def classification_loss(
    logits: Tensor,
    targets: Tensor,
    kind: ClassificationLoss = "ce",
    *,
    class_counts: Optional[Tensor] = None,
    focal_gamma: float = 2.0,
    label_smoothing: float = 0.1,
    class_balanced_beta: float = 0.9999,
    log_probs: Optional[Tensor] = None,
) -> Tensor:
    """One per-sample loss from the menu; ``class_counts`` is needed by the class-imbalance losses, ``log_probs``
    (``log_softmax(logits)``, where the caller has it) saves computing it again."""
    if kind == "ce":
        if log_probs is not None:
            return F.nll_loss(log_probs, targets, reduction="none")
        return F.cross_entropy(logits, targets, reduction="none")
    if kind == "focal":
        return focal_loss(logits, targets, focal_gamma, log_probs)
    if kind == "label_smoothing":
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    if class_counts is None:
        raise ValueError(f"loss {kind!r} needs the training class counts")
    if kind == "class_balanced":
        weights = class_balanced_weights(class_counts, class_balanced_beta).to(logits.device)
        return weights[targets] * F.cross_entropy(logits, targets, reduction="none")
    if kind == "balanced_softmax":
        return balanced_softmax_loss(logits, targets, class_counts.to(logits.device))
    raise ValueError(f"unknown classification loss {kind!r}")


# --- consistency between an image and its mirror --------------------------------------------


def _reduce(per_sample: Tensor, reduction: Reduction, factor: float = 1.0) -> Tensor:
    """``factor`` times the sum or the batch mean of ``per_sample`` (N, or N x K summed over classes too)."""
    if reduction == "sum":
        return per_sample.sum() if factor == 1.0 else per_sample.sum() * factor
    if reduction == "mean":
        return per_sample.sum() * (factor / len(per_sample))
    raise ValueError(f"unknown reduction {reduction!r}; expected 'sum' or 'mean'")


def jsd_consistency(
    logits: Tensor,
    logits_flipped: Tensor,
    reduction: Reduction = "sum",
    direction: JSDDirection = "mixture_to_view",
    log_probs: Optional[Tensor] = None,
) -> Tensor:
    """Eq. 7: 0.5 * [KL(a || b) + KL(a' || b')] between each view and the logit mixture m = (z + z') / 2.

    ``"mixture_to_view"`` is the authors' code, KL(softmax(m) || softmax(z)); ``"view_to_mixture"`` is
    the paper's D_KL(z || m). ``"sum"`` sums over batch and classes (the code); ``"mean"`` averages
    over the batch, so the two differ by the batch size. ``log_probs``: ``log_softmax(logits)`` where the caller
    has it.
    """
    log_p = F.log_softmax(logits, dim=1) if log_probs is None else log_probs
    log_q = F.log_softmax(logits_flipped, dim=1)
    log_m = F.log_softmax((logits + logits_flipped) * 0.5, dim=1)
    if direction == "mixture_to_view":
        # KL(m || p) + KL(m || q) = sum m (2 log m - log p - log q): one product for both views.
        per_element = log_m.exp() * torch.add(log_p + log_q, log_m, alpha=-2.0)
        return _reduce(per_element, reduction, -0.5)
    if direction == "view_to_mixture":
        per_element = log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m)
        return _reduce(per_element, reduction, 0.5)
    raise ValueError(f"unknown JSD direction {direction!r}")


def l1_consistency(logits: Tensor, logits_flipped: Tensor, reduction: Reduction = "sum") -> Tensor:
    """The NAW + L1 ablation: sum over classes of |p - p'| between the two views' probabilities."""
    per_sample = (logits.softmax(dim=1) - logits_flipped.softmax(dim=1)).abs().sum(dim=1)
    return _reduce(per_sample, reduction)


def class_activation_maps(features: Tensor, classifier_weight: Tensor) -> Tensor:
    """CAMs (Zhou et al. 2016): the classifier applied at every position of the [N, C, H, W] features."""
    return torch.einsum("nchw,kc->nkhw", features, classifier_weight)


def cam_consistency(features: Tensor, features_flipped: Tensor, classifier_weight: Tensor) -> Tensor:
    """The NAW + CAM ablation (EAC, Zhang et al. 2022): MSE between the image's CAMs and the mirror's, flipped back."""
    cams = class_activation_maps(features, classifier_weight)
    cams_flipped = class_activation_maps(features_flipped, classifier_weight)
    return F.mse_loss(cams, cams_flipped.flip(-1))


# --- eq. 8 ------------------------------------------------------------------------------------


def weighted_loss(
    per_sample_loss: Tensor, weights: Optional[Tensor], lam: float = 0.5, detach_weight: bool = False
) -> Tensor:
    """Eq. 5 scaled by lam: lam * mean((1 + w) * l). With ``weights=None`` (no NAW) it is lam * mean(l).

    The official code does not detach w, so gradients flow through the weight by default.
    """
    if weights is None:
        return lam * per_sample_loss.mean()
    if detach_weight:
        weights = weights.detach()
    return torch.addcmul(per_sample_loss, weights, per_sample_loss).mean() * lam
