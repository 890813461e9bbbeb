"""What validation and test measure: a confusion matrix per stage on the device, read once per evaluation into an
:class:`~nla.records.Evaluation` (overall, mean and per-class accuracy); and :class:`ClassifierEvaluation`, the
LightningModule steps that evaluate a classifier and predict with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from nla.backbones.weights import WeightsMismatchError, state_dict_mismatch
from nla.batch import FaceBatch, check_labels, unpack
from nla.classes import LabelMap
from nla.records import Evaluation

EVALUATION_STAGES = ("val", "test")


class StageConfusion(nn.Module):
    """The confusion matrices of the ``val`` and ``test`` stages, and the map from the data's classes to the model's
    (images of classes the model lacks are counted aside, and named in the record)."""

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)
        # labels and logits are checked by nla; torchmetrics' checks would wait for the device
        self.stages = nn.ModuleDict(
            {
                stage: MulticlassConfusionMatrix(len(self.class_names), validate_args=False)
                for stage in EVALUATION_STAGES
            }
        )
        self.label_map: Optional[LabelMap] = None

    def __getitem__(self, stage: str) -> Any:
        return self.stages[stage]

    def update(self, stage: str, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Count a batch; the logits and labels of the images the model has classes for, as the model's."""
        if self.label_map is not None:
            logits, labels = self.label_map(logits, labels)
        confusion: Any = self.stages[stage]
        confusion.update(logits, labels)
        return logits, labels

    def take(self, stage: str, reduce: Callable[[Tensor], Tensor], epoch: Optional[int] = None) -> Evaluation:
        """The stage's record since the last ``take`` (counts summed over processes by ``reduce``), and reset."""
        confusion: Any = self.stages[stage]
        excluded = self.label_map.take_excluded(reduce) if self.label_map is not None else {}
        record = Evaluation.from_confusion(confusion.compute().cpu(), self.class_names, epoch=epoch, excluded=excluded)
        confusion.reset()
        return record


class ClassifierEvaluation(LightningModule):
    """The evaluation of a classifier of ``class_names`` (validation, test, prediction) as a LightningModule's steps:
    its ``confusion`` per stage, each evaluation's record in ``evaluations``, and in a fit one record per validated
    epoch in ``validation_history``, which a checkpoint carries with the classes. A subclass builds ``confusion`` with
    its model."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names: list[str] = []
        self.confusion: Optional[StageConfusion] = None  # of the "val" and "test" stages, once the classes are known
        self.validation_history: list[Evaluation] = []  # one record per validated epoch; part of the checkpoint
        self.evaluations: dict[str, Evaluation] = {}  # the latest evaluation of each stage

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
        checkpoint["class_names"] = list(self.class_names)  # test and predict need no dataset to know them
        checkpoint["validation_history"] = [r.to_dict() for r in self.validation_history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.validation_history = [Evaluation.from_dict(r) for r in checkpoint.get("validation_history", [])]

    def attached_trainer(self) -> Any:
        """The Trainer the module is attached to; ``None`` outside one (a step called as a library's)."""
        try:
            return self.trainer
        except RuntimeError:  # LightningModule.trainer raises where none is attached
            return None

    def _require_confusion(self) -> StageConfusion:
        if self.confusion is None:
            raise RuntimeError(
                "the backbone is built from the data's classes when fitting; pass num_classes or class_names to use "
                f"{type(self).__name__} before that"
            )
        return self.confusion

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
