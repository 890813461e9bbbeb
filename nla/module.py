"""The training loop glued together: :class:`NLAModule`, a LightningModule that trains any timm backbone with NLA.

The maths lives in :mod:`nla.losses`; this module only wires the backbone, the loss terms, the
metrics and the optimiser together, and exposes every knob as a typed init argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Sequence

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from nla import losses
from nla.backbone import DEFAULT_IGNORED_KEYS, create_backbone
from nla.data.samples import DataError

Consistency = Literal["none", "jsd", "l1", "cam"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised before the step changes any weight."""


class NLAModule(LightningModule):
    """Facial expression recognition with NLA: NAW-weighted classification plus a mirror-consistency term.

    The default is NLA as the authors' code runs it: cross-entropy weighted by NAW, plus the JSD between
    an image and its mirror, with the ``"official"`` constants. Every baseline of the paper is a
    combination of ``loss``, ``naw`` and ``consistency`` (see ``configs/methods/``).

    Args:
        backbone: Any timm model name.
        num_classes: Number of expression classes.
        class_names: Class names in label order, for logs and predictions (``None``: the DataModule's).
        pretrained_weights: A weights file for the backbone (plain state dict, or a dict with
            ``'state_dict'``); ``module.`` prefixes are stripped and the old classifier is dropped.
        ignore_weight_keys: Further key patterns of the weights file to drop (fnmatch), such as the
            IJB-A checkpoint's ``feature.*`` embedding.
        loss: Per-sample classification loss: ``ce``, ``focal``, ``label_smoothing``, ``class_balanced``
            (Cui et al. 2019) or ``balanced_softmax`` (Ren et al. 2020).
        naw: Weight the classification loss by NAW, ``(1 + w)`` in eq. 8.
        consistency: Mirror-consistency term: ``jsd`` (NLA), ``l1``, ``cam`` (EAC-style) or ``none``.
        preset: ``official`` (the authors' code, which produced the published numbers) or ``paper`` (the text).
        lam: lambda of eq. 8 (``None``: the preset's, 0.5).
        consistency_weight: Weight of the consistency term (``None``: the preset's).
        consistency_reduction: ``sum`` over batch and classes (code) or ``mean`` over the batch (``None``: preset).
        jsd_direction: ``mixture_to_view`` (code) or ``view_to_mixture`` (paper) (``None``: preset).
        true_mean: Mean of the true-prediction kernel (``None``: preset, (0.5, 0.5)).
        true_major_std: Major std of the true-prediction kernel (``None``: preset, 0.8).
        true_axis_ratio: Axis ratio of the true-prediction kernel (``None``: preset, 2).
        true_scale: Scale of the true-prediction weight, ``t_lambda`` (``None``: preset, 1).
        false_mean: Mean of the false-prediction kernel (``None``: preset, (0.3, 0.15)).
        false_major_std: Major std of the false-prediction kernel (``None``: preset, 0.91 or 0.882).
        false_axis_ratio: Axis ratio of the false-prediction kernel (``None``: preset, 6).
        schedule_slope: Slope of the covariance scheduler, eq. 6 (``None``: preset, 15 or 10).
        schedule_epochs: ``E`` of eq. 6 (``None``: the trainer's ``max_epochs``).
        detach_weight: Stop gradients through the NAW weight (the code lets them flow).
        focal_gamma: Focusing parameter of the focal loss.
        label_smoothing: Smoothing of the label-smoothing loss.
        class_balanced_beta: beta of the class-balanced loss's effective number.
        class_counts: Training class counts for the class-imbalance losses (``None``: the DataModule's).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_gamma: ExponentialLR decay, stepped once per epoch.
        channels_last: Run the backbone in channels-last memory format (faster convolutions on GPUs).
        compile: ``torch.compile`` the backbone.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 7,
        class_names: Optional[list[str]] = None,
        pretrained_weights: Optional[str] = None,
        ignore_weight_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
        loss: losses.ClassificationLoss = "ce",
        naw: bool = True,
        consistency: Consistency = "jsd",
        preset: losses.Preset = "official",
        lam: Optional[float] = None,
        consistency_weight: Optional[float] = None,
        consistency_reduction: Optional[losses.Reduction] = None,
        jsd_direction: Optional[losses.JSDDirection] = None,
        true_mean: Optional[tuple[float, float]] = None,
        true_major_std: Optional[float] = None,
        true_axis_ratio: Optional[float] = None,
        true_scale: Optional[float] = None,
        false_mean: Optional[tuple[float, float]] = None,
        false_major_std: Optional[float] = None,
        false_axis_ratio: Optional[float] = None,
        schedule_slope: Optional[float] = None,
        schedule_epochs: Optional[int] = None,
        detach_weight: bool = False,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.1,
        class_balanced_beta: float = 0.9999,
        class_counts: Optional[list[int]] = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_gamma: float = 0.9,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names {class_names} for num_classes={num_classes}")
        self.settings = losses.resolve_settings(
            preset, lam=lam, consistency_weight=consistency_weight, consistency_reduction=consistency_reduction,
            jsd_direction=jsd_direction, true_mean=true_mean, true_major_std=true_major_std,
            true_axis_ratio=true_axis_ratio, true_scale=true_scale, false_mean=false_mean,
            false_major_std=false_major_std, false_axis_ratio=false_axis_ratio, schedule_slope=schedule_slope,
        )
        self.class_names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
        self.register_buffer("class_counts", torch.tensor(class_counts or [0] * num_classes, dtype=torch.long))
        self.configure_backbone()
        self.configure_metrics()
        self._forward_all = torch.compile(self.features_and_logits) if compile else self.features_and_logits
        self.confusion_matrices: dict[str, Tensor] = {}

    # --- building blocks ---------------------------------------------------------------------

    def configure_backbone(self) -> None:
        hp = self.hparams
        self.model = create_backbone(hp.backbone, hp.num_classes)
        if hp.pretrained_weights:
            from nla.backbone import load_pretrained_weights

            load_pretrained_weights(self.model, hp.pretrained_weights, hp.ignore_weight_keys)
        if hp.consistency == "cam" and not isinstance(self.model.get_classifier(), nn.Linear):
            raise ValueError(f"consistency 'cam' needs a linear classifier; {hp.backbone} has {self.model.get_classifier()}")
        if hp.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def configure_metrics(self) -> None:
        k = self.hparams.num_classes
        for stage in ("val", "test"):
            metrics = MetricCollection(
                {
                    "acc": MulticlassAccuracy(k, average="micro"),
                    "mean_acc": MulticlassAccuracy(k, average="macro"),
                    "class_acc": MulticlassAccuracy(k, average=None),
                    "confusion": MulticlassConfusionMatrix(k),
                },
                compute_groups=False,
            )
            setattr(self, f"{stage}_metrics", metrics)

    @property
    def naw_settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.settings)

    # --- forward -------------------------------------------------------------------------------

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.model.forward_features(images)
        return features, self.model.forward_head(features)

    def forward(self, images: Tensor) -> Tensor:
        return self._forward_all(images)[1]

    @staticmethod
    def unpack(batch: Any) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(images, labels, mirrors)`` from a dict batch of the nla DataModules or an ``(images, labels)`` pair."""
        if isinstance(batch, dict):
            return batch["image"], batch["label"], batch.get("image_mirror")
        images, labels = batch[0], batch[1]
        return images, labels, None

    @classmethod
    def training_views(cls, batch: Any) -> tuple[Tensor, Tensor]:
        """``(views, labels)``: the 2N images of one forward pass, the batch then its mirrors. The cached
        pipeline delivers them ready as ``batch["views"]``; otherwise they are joined here, and a batch
        without ``image_mirror`` is mirrored here."""
        if isinstance(batch, dict) and "views" in batch:
            return batch["views"], batch["label"]
        images, labels, mirrors = cls.unpack(batch)
        if mirrors is None:
            mirrors = images.flip(-1)
        return torch.cat([images, mirrors]), labels

    # --- training ------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.hparams.num_classes:
            raise DataError(
                f"the model has num_classes={self.hparams.num_classes} but the data has {data_classes} classes "
                f"{getattr(datamodule, 'class_names', '')}"
            )
        if self.hparams.class_names is None and getattr(datamodule, "class_names", None):
            self.class_names = list(datamodule.class_names)
        needs_counts = self.hparams.loss in ("class_balanced", "balanced_softmax")
        if stage == "fit" and needs_counts and self.hparams.class_counts is None:
            counts = getattr(datamodule, "train_class_counts", None)
            if counts is None:
                raise ValueError(f"loss {self.hparams.loss!r} needs class counts: pass class_counts or use an nla DataModule")
            self.class_counts.copy_(torch.as_tensor(counts))

    def on_fit_start(self) -> None:
        # The logged config shows the constants actually used, not only the preset's name.
        for logger in self.loggers:
            logger.log_hyperparams({f"resolved/{k}": v for k, v in self.naw_settings.items()})

    @property
    def schedule_epochs(self) -> int:
        epochs = self.hparams.schedule_epochs or (self.trainer.max_epochs if self._trainer is not None else None)
        if not epochs or epochs < 1:
            raise ValueError("NAW's covariance scheduler needs the number of epochs: set trainer.max_epochs or model.schedule_epochs")
        return epochs

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, labels = self.training_views(batch)
        n = len(labels)
        # One forward pass over the images and their mirrors together.
        features, logits = self._forward_all(views)
        logits = logits.float()
        z, z_mirror = logits[:n], logits[n:]
        probs = z.softmax(dim=1)
        s = self.settings
        weights = (
            losses.naw_weight(probs, labels, self.current_epoch, self.schedule_epochs, **self.naw_settings)
            if self.hparams.naw
            else None
        )
        per_sample = losses.classification_loss(
            z, labels, self.hparams.loss, class_counts=self.class_counts, focal_gamma=self.hparams.focal_gamma,
            label_smoothing=self.hparams.label_smoothing, class_balanced_beta=self.hparams.class_balanced_beta,
        )
        classification = losses.weighted_loss(per_sample, weights, s.lam, self.hparams.detach_weight)
        consistency = self.consistency_term(z, z_mirror, features, n)
        loss = classification + s.consistency_weight * consistency
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.current_epoch}, step {self.global_step}: classification="
                f"{classification.item():.4g}, consistency={consistency.item():.4g}. The run stops before this step "
                "changes any weight; the checkpoints already written are kept (resume with --ckpt_path last, "
                "perhaps with a lower --model.lr)."
            )
        logged = {"train/loss": loss, "train/classification": classification, "train/consistency": consistency}
        if weights is not None:
            logged["train/naw_weight"] = weights.mean()
        self.log_dict(logged, on_step=True, on_epoch=True, batch_size=n, prog_bar=False)
        epoch_values = {
            "train/covariance_schedule": losses.covariance_schedule(self.current_epoch, self.schedule_epochs, s.schedule_slope),
            "train/lr": self.optimizers().param_groups[0]["lr"] if self._trainer is not None else self.hparams.lr,
        }
        self.log_dict(epoch_values, on_step=False, on_epoch=True, batch_size=n)
        output = {"loss": loss, "probs": probs.detach(), "labels": labels}
        if weights is not None:
            output["weights"] = weights.detach()
        if isinstance(batch, dict) and "index" in batch:
            output["index"] = batch["index"]
        return output

    def consistency_term(self, z: Tensor, z_mirror: Tensor, features: Tensor, n: int) -> Tensor:
        s, kind = self.settings, self.hparams.consistency
        if kind == "jsd":
            return losses.jsd_consistency(z, z_mirror, s.consistency_reduction, s.jsd_direction)
        if kind == "l1":
            return losses.l1_consistency(z, z_mirror, s.consistency_reduction)
        if kind == "cam":
            weight = self.model.get_classifier().weight
            return losses.cam_consistency(features[:n].float(), features[n:].float(), weight.float())
        return z.new_zeros(())

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- evaluation ----------------------------------------------------------------------------

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        images, labels, _ = self.unpack(batch)
        logits = self(images).float()
        getattr(self, f"{stage}_metrics").update(logits, labels)
        self.log(f"{stage}/loss", torch.nn.functional.cross_entropy(logits, labels), batch_size=len(images))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        logged = {f"{stage}/acc": values["acc"], f"{stage}/mean_acc": values["mean_acc"]}
        for name, accuracy in zip(self.class_names, values["class_acc"]):
            logged[f"{stage}/acc_{name}"] = accuracy
        self.log_dict(logged, sync_dist=False)  # torchmetrics already synced the states across processes
        self.confusion_matrices[stage] = values["confusion"].detach().cpu()
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        probs = self(batch["image"]).float().softmax(dim=1)
        return {"path": batch["path"], "probs": probs.cpu(), "ok": batch["ok"], "error": batch["error"]}

    # --- checkpoints carry the class names, so predict needs no dataset -----------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.class_names = list(checkpoint.get("class_names", self.class_names))
