"""Matching a dataset's expression classes to a model's by name, with the usual FER synonyms.

A model trained on RAF-DB ("Happiness", "Anger", ...) can be tested on FER+ ("happiness", "anger", ...,
"contempt") or on a folder named "happy", "angry": the classes are matched by name, never by position.
Classes of the data that the model lacks (contempt, for a 7-class model) are left out of the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nla.class_names import canonical
from nla.errors import DataError


@dataclass(frozen=True)
class ClassMatch:
    """For each class of the data, the index of the model's class it is (``None``: the model lacks it)."""

    data_classes: tuple[str, ...]
    model_classes: tuple[str, ...]
    to_model: tuple[int | None, ...]

    @property
    def identity(self) -> bool:
        return self.to_model == tuple(range(len(self.model_classes))) and len(self.data_classes) == len(
            self.model_classes
        )

    @property
    def unmatched(self) -> list[str]:
        return [name for name, index in zip(self.data_classes, self.to_model) if index is None]

    def describe(self) -> str:
        pairs = [
            f"{d}->{self.model_classes[m]}"
            for d, m in zip(self.data_classes, self.to_model)
            if m is not None and d != self.model_classes[m]
        ]
        parts = []
        if pairs:
            parts.append("matched by name: " + ", ".join(pairs))
        if self.unmatched:
            parts.append(f"left out of the metrics (the model has no such class): {', '.join(self.unmatched)}")
        return "; ".join(parts)


def match_classes(data_classes: Sequence[str], model_classes: Sequence[str]) -> ClassMatch:
    """Match ``data_classes`` to ``model_classes`` by canonical name.

    Raises :class:`DataError` when the match is ambiguous (two classes of one side with the same
    meaning) or when no class of the data matches any class of the model.
    """
    data_classes, model_classes = tuple(data_classes), tuple(model_classes)
    if data_classes == model_classes:
        return ClassMatch(data_classes, model_classes, tuple(range(len(model_classes))))
    model_index: dict[str, int] = {}
    for k, name in enumerate(model_classes):
        key = canonical(name)
        if key in model_index:
            raise DataError(
                f"the model's classes {list(model_classes)} name {key!r} twice "
                f"({model_classes[model_index[key]]!r} and {name!r}); they cannot be matched by name"
            )
        model_index[key] = k
    to_model: list[int | None] = [model_index.get(canonical(name)) for name in data_classes]
    taken: dict[int, str] = {}
    for name, index in zip(data_classes, to_model):
        if index is None:
            continue
        if index in taken:
            raise DataError(
                f"the data's classes {taken[index]!r} and {name!r} both match the model's class "
                f"{model_classes[index]!r}; rename one of them"
            )
        taken[index] = name
    if not taken:
        raise DataError(
            f"none of the data's classes {list(data_classes)} matches a class of the model {list(model_classes)}; "
            "classes are matched by name (anger/angry, happiness/happy, sadness/sad, surprise/surprised, "
            "fear/fearful, disgust/disgusted, neutral, contempt), so name the data's classes like the model's"
        )
    return ClassMatch(data_classes, model_classes, tuple(to_model))


class LabelMap(nn.Module):
    """Evaluating a model on data whose classes it names otherwise: each data label becomes the model's class of the
    same name; images of a data class the model lacks are left out of the metrics and counted."""

    lookup: Tensor  # data class index -> model class index (-1: a class the model lacks)
    excluded_counts: Tensor  # images of such classes met since the last :meth:`take_excluded`

    def __init__(self, match: ClassMatch) -> None:
        super().__init__()
        self.match = match
        lookup = [-1 if k is None else k for k in match.to_model]
        self.register_buffer("lookup", torch.tensor(lookup), persistent=False)
        self.register_buffer("excluded_counts", torch.zeros(len(lookup), dtype=torch.long), persistent=False)

    def forward(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The logits and model-class labels of the images whose class the model has."""
        if self.match.identity:
            return logits, labels
        mapped = self.lookup[labels]
        kept = mapped >= 0
        self.excluded_counts += torch.bincount(labels[~kept], minlength=len(self.lookup))
        return logits[kept], mapped[kept]

    def take_excluded(self, reduce: Callable[[Tensor], Tensor]) -> dict[str, int]:
        """The images left out per data class the model lacks (summed by ``reduce`` over processes), and reset."""
        if not self.match.unmatched:
            return {}
        counts = reduce(self.excluded_counts).tolist()
        self.excluded_counts.zero_()
        return {name: int(n) for name, n in zip(self.match.data_classes, counts) if name in self.match.unmatched}
