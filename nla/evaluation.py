"""What validation and test measure: a confusion matrix per stage on the device, read once per evaluation into an
:class:`~nla.records.Evaluation` (overall, mean and per-class accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

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
