"""Eq. 8 as one object: the criterion that :class:`~nla.module.NLAModule` trains with and the tests check.

:class:`CriterionConfig` holds every constant of the training objective (which per-sample loss, whether
NAW weighs it, which consistency term, the NAW kernels and scheduler, and the weights of eq. 8);
:class:`Criterion` turns the logits of a batch and of its mirror into the loss and its parts, using the
plain functions of :mod:`nla.losses`. Every baseline of the paper is a setting of the same criterion.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nla import losses
from nla.errors import ConfigError

Consistency = Literal["none", "jsd", "l1", "cam"]


@dataclass(frozen=True)
class CriterionConfig:
    """Every constant of eq. 8, ``lam * mean((1 + w) * l) + consistency_weight * R``.

    The defaults are NLA as the authors' code runs it, which produced the published numbers (the
    ``official`` preset); ``configs/presets/`` holds the paper's text and nla's own recipes as overlays of
    these constants. ``docs/method.md`` derives each constant.

    Args:
        loss: The per-sample classification loss ``l``: ``ce``, ``focal``, ``label_smoothing``,
            ``class_balanced`` (Cui et al. 2019) or ``balanced_softmax`` (Ren et al. 2020).
        naw: Weight ``l`` by the NAW weight ``w`` of eq. 4; without NAW, ``w = 0``.
        consistency: The consistency term ``R`` between an image and its mirror: ``jsd`` (NLA, eq. 7),
            ``l1`` or ``cam`` (the ablations of Table 5) or ``none``.
        lam: lambda of eq. 8.
        consistency_weight: The weight of ``R`` (the code: 0.5; the paper: 2 * (1 - lambda) = 1).
        consistency_reduction: ``sum`` of ``R`` over the batch and classes (the code) or ``mean`` over the batch.
        jsd_direction: ``mixture_to_view``, KL(m || view) (the code), or ``view_to_mixture``, KL(view || m) (the paper).
        kernels: The two kernels of the NAW weight.
        schedule_slope: Slope of the covariance scheduler, eq. 6: CS(e, E) = 1 - exp(-slope * e / E).
        schedule_epochs: ``E`` of eq. 6; ``None`` takes the trainer's ``max_epochs``.
        detach_weight: Stop gradients through ``w`` (the code lets them flow).
        naw_warmup_epochs: Train the first epochs with ``w = 0`` (plain ``lam * l``) before NAW starts;
            the scheduler still counts from epoch 0.
        focal_gamma: Focusing parameter of the focal loss.
        label_smoothing: Smoothing of the label-smoothing loss.
        class_balanced_beta: beta of the class-balanced loss's effective number.
    """

    loss: losses.ClassificationLoss = "ce"
    naw: bool = True
    consistency: Consistency = "jsd"
    lam: float = 0.5
    consistency_weight: float = 0.5
    consistency_reduction: losses.Reduction = "sum"
    jsd_direction: losses.JSDDirection = "mixture_to_view"
    kernels: losses.NAWKernels = losses.NAWKernels()
    schedule_slope: float = 15.0
    schedule_epochs: Optional[int] = None
    detach_weight: bool = False
    naw_warmup_epochs: int = 0
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    class_balanced_beta: float = 0.9999

    def __post_init__(self) -> None:
        if isinstance(self.kernels, Mapping):  # from a checkpoint's plain-dict hyperparameters
            object.__setattr__(self, "kernels", losses.NAWKernels(**self.kernels))
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # a choice spelt wrong fails here, not at the first step
            choices = typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) is Literal else ()
            if choices and getattr(self, field.name) not in choices:
                raise ConfigError(
                    f"criterion {field.name}={getattr(self, field.name)!r}: expected one of {', '.join(choices)}"
                )
        for name in ("lam", "consistency_weight", "schedule_slope", "focal_gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"criterion {name}={value} must be a finite number >= 0")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.class_balanced_beta < 1.0:
            raise ConfigError(
                f"criterion label_smoothing={self.label_smoothing} and class_balanced_beta="
                f"{self.class_balanced_beta} must lie in [0, 1)"
            )
        if self.schedule_epochs is not None and self.schedule_epochs < 1:
            raise ConfigError(f"criterion schedule_epochs={self.schedule_epochs} must be at least 1 (or null)")
        if self.naw_warmup_epochs < 0:
            raise ConfigError(f"criterion naw_warmup_epochs={self.naw_warmup_epochs} must be >= 0")

    @classmethod
    def coerce(cls, value: CriterionConfig | Mapping[str, Any]) -> CriterionConfig:
        """The config itself, or one built from the plain dict a checkpoint stores."""
        if isinstance(value, CriterionConfig):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"model.criterion {value!r}: the criterion is a group of settings; give the ones to change "
                "(--model.criterion.<name>), or leave it out for NLA's"
            )
        return cls(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so that checkpoints load with ``torch.load(weights_only=True)``."""
        return dataclasses.asdict(self)

    @property
    def uses_mirror(self) -> bool:
        """Whether the loss needs the mirror of each image (a consistency term)."""
        return self.consistency != "none"


class CriterionOutput(NamedTuple):
    """The loss of one batch and its parts (all from the image's view unless named otherwise)."""

    total: Tensor
    classification: Tensor  # lam * mean((1 + w) * l)
    consistency: Tensor  # R, before its weight
    weights: Optional[Tensor]  # w per sample; None without NAW or during the warm-up
    prediction_true: Tensor  # argmax == label per sample: the branch of eq. 4
    probs: Tensor  # softmax of the view's logits, detached
    schedule: Any  # CS(e, E) of eq. 6: a float, or the graph step's device tensor
    logits: Optional[Tensor] = None  # the view's logits it was computed from (with their graph)
    log_probs: Optional[Tensor] = None  # log-softmax of the view's logits, detached


class Criterion(nn.Module):
    """Eq. 8 for NLA and every baseline, from one :class:`CriterionConfig`.

    The class-imbalance losses need the training class counts: pass ``class_counts`` or call
    :meth:`set_class_counts` before the first batch.
    """

    class_counts: Tensor

    def __init__(
        self,
        config: CriterionConfig = CriterionConfig(),
        class_counts: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.config = CriterionConfig.coerce(config)
        size = len(class_counts) if class_counts is not None else (num_classes or 0)
        self.register_buffer("class_counts", torch.zeros(size, dtype=torch.long), persistent=False)
        if class_counts is not None:
            self.set_class_counts(class_counts)

    @property
    def needs_class_counts(self) -> bool:
        return self.config.loss in ("class_balanced", "balanced_softmax")

    def check_classifier(self, classifier: nn.Module, backbone: str) -> None:
        """The CAM consistency needs the class activation maps of a linear classifier."""
        if self.config.consistency == "cam" and not isinstance(classifier, nn.Linear):
            raise ConfigError(f"consistency 'cam' needs a linear classifier; {backbone} has {classifier}")

    def take_class_counts(self, counts: Optional[Sequence[int]]) -> None:
        """The training class counts a fit's data gives (``None``: it gives none), for the losses that need them."""
        if not self.needs_class_counts:
            return
        if counts is None:
            raise ConfigError(
                f"loss {self.config.loss!r} needs class counts: pass class_counts or use an nla DataModule"
            )
        self.set_class_counts(counts)

    def warmup_warning(self, max_epochs: Optional[int]) -> Optional[str]:
        """A warning for a run that would never weight a sample by NAW, which it asks for; ``None`` otherwise."""
        warmup = self.config.naw_warmup_epochs
        if not self.config.naw or max_epochs is None or not 0 < max_epochs <= warmup:
            return None
        return (
            f"--model.criterion.naw_warmup_epochs {warmup} is not below --trainer.max_epochs {max_epochs}: NAW never "
            "starts in this run"
        )

    def require_class_counts(self) -> None:
        """The class-imbalance losses need the training class counts, and a criterion made without them has none."""
        if self.needs_class_counts and self.class_counts.numel() == 0:
            raise ConfigError(
                f"loss {self.config.loss!r} needs the training class counts: Criterion(config, class_counts=...) or "
                "criterion.set_class_counts(...) (NLAModule takes them from an nla DataModule)"
            )

    def set_class_counts(self, counts: Sequence[int] | Tensor) -> None:
        counts = torch.as_tensor(counts, dtype=torch.long)
        if self.needs_class_counts and (counts <= 0).any():
            raise ValueError(f"loss {self.config.loss!r} needs every training class count > 0, got {counts.tolist()}")
        self.class_counts = counts.to(self.class_counts.device)

    def schedule_epochs(self, max_epochs: Optional[int]) -> int:
        """``E`` of the covariance scheduler: the config's, else the trainer's ``max_epochs``."""
        epochs = self.config.schedule_epochs or max_epochs
        if not epochs or epochs < 1:
            raise ValueError(
                "NAW's covariance scheduler needs the number of epochs: set trainer.max_epochs or "
                "model.criterion.schedule_epochs"
            )
        return epochs

    def schedule(self, epoch: float, max_epochs: int) -> float:
        """CS(e, E) of eq. 6, with ``E`` from the config when it sets one."""
        return losses.covariance_schedule(epoch, self.schedule_epochs(max_epochs), self.config.schedule_slope)

    def naw(
        self,
        probs: Tensor,
        targets: Tensor,
        epoch: int,
        max_epochs: int,
        schedule: Optional[Any] = None,
        prediction: Optional[Tensor] = None,
    ) -> Optional[Tensor]:
        """The NAW weight of eq. 4 per sample, or ``None`` where NAW is off (or still warming up); ``schedule``, the
        scheduler's value if given (a device tensor in a compiled step), else computed from the epoch."""
        if not self.config.naw or epoch < self.config.naw_warmup_epochs:
            return None
        value = self.schedule(epoch, max_epochs) if schedule is None else schedule
        return losses.naw_weight(probs, targets, value, self.config.kernels, prediction)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        epoch: int,
        max_epochs: int,
        logits_mirror: Optional[Tensor] = None,
        features: Optional[Tensor] = None,
        features_mirror: Optional[Tensor] = None,
        classifier_weight: Optional[Tensor] = None,
        schedule: Optional[Any] = None,
    ) -> CriterionOutput:
        """Eq. 8 for a batch: ``logits`` of the images and, for a consistency term, ``logits_mirror`` of
        their mirrors (``cam`` needs the backbone's feature maps of both and the classifier's weight). ``schedule``
        is the scheduler's value where the caller holds it (the graph step's device tensor)."""
        config = self.config
        # One log-softmax serves the loss, the consistency term, the probabilities and the entropy the meter sums:
        # each operation is a kernel launch and a step's host time on a GPU (benchmarks/host_overhead.py).
        log_probs = F.log_softmax(logits, dim=1)
        probs = log_probs.exp()
        prediction = losses.prediction_true(probs, targets)
        weights = self.naw(probs, targets, epoch, max_epochs, schedule, prediction)
        per_sample = self.per_sample_loss(logits, targets, log_probs)
        classification = losses.weighted_loss(per_sample, weights, config.lam, config.detach_weight)
        consistency = self.consistency(logits, logits_mirror, features, features_mirror, classifier_weight, log_probs)
        total = torch.add(classification, consistency, alpha=config.consistency_weight)
        return CriterionOutput(
            total,
            classification,
            consistency,
            weights,
            prediction,
            probs.detach(),
            self.schedule(epoch, max_epochs) if schedule is None else schedule,
            logits,
            log_probs.detach(),
        )

    def per_sample_loss(self, logits: Tensor, targets: Tensor, log_probs: Optional[Tensor] = None) -> Tensor:
        """The classification loss ``l`` of each sample, before the NAW weight (``log_probs``: ``log_softmax(logits)``
        where the caller has it)."""
        config = self.config
        self.require_class_counts()
        return losses.classification_loss(
            logits,
            targets,
            config.loss,
            class_counts=self.class_counts if self.needs_class_counts else None,
            focal_gamma=config.focal_gamma,
            label_smoothing=config.label_smoothing,
            class_balanced_beta=config.class_balanced_beta,
            log_probs=log_probs,
        )

    def consistency(
        self,
        logits: Tensor,
        logits_mirror: Optional[Tensor],
        features: Optional[Tensor],
        features_mirror: Optional[Tensor],
        classifier_weight: Optional[Tensor],
        log_probs: Optional[Tensor] = None,
    ) -> Tensor:
        kind, config = self.config.consistency, self.config
        if kind == "none":
            return logits.new_zeros(())
        if kind == "cam":
            if features is None or features_mirror is None or classifier_weight is None:
                raise ValueError("consistency 'cam' needs the feature maps of both views and the classifier weight")
            wide = torch.promote_types(
                features.dtype, torch.float32
            )  # bf16 feature maps under autocast, never narrower
            return losses.cam_consistency(features.to(wide), features_mirror.to(wide), classifier_weight.to(wide))
        if logits_mirror is None:
            raise ValueError(f"consistency {kind!r} needs the logits of the mirrored images")
        if kind == "jsd":
            return losses.jsd_consistency(
                logits, logits_mirror, config.consistency_reduction, config.jsd_direction, log_probs
            )
        if kind == "l1":
            return losses.l1_consistency(logits, logits_mirror, config.consistency_reduction)
        raise ValueError(f"unknown consistency {kind!r}; expected one of none, jsd, l1, cam")

    def weight_gradient_norm(self, logits: Tensor, output: CriterionOutput, targets: Tensor) -> Optional[Tensor]:
        """The norm of the gradient that reaches the logits through ``w`` alone (zero when ``w`` is detached).

        It is the part of d(eq. 8)/dz that the undetached weight adds: lam * d/dz mean(w(z) * l) with ``l``
        held constant. ``logits`` must be the tensor the output was computed from.
        """
        if output.weights is None or not logits.requires_grad:
            return None
        if self.config.detach_weight:
            return logits.new_zeros(())
        through_weight = self.config.lam * (output.weights * self.per_sample_loss(logits.detach(), targets)).mean()
        (gradient,) = torch.autograd.grad(through_weight, logits, retain_graph=True)
        return gradient.norm()
