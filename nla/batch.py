"""What passes between the data and the model: :class:`FaceBatch` (and :class:`MediaBatch` for ``nla predict``),
and what a training step gives the callbacks, :class:`StepOutput`.

Every nla DataModule delivers a :class:`FaceBatch`; :class:`nla.module.NLAModule` also takes an ``(images,
labels)`` pair or images alone, as any DataModule gives them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Optional, TypedDict

import torch
from torch import Tensor
from torch.utils.data import default_collate


@dataclass
class FaceBatch:
    """A batch of face images.

    Args:
        image: N x 3 x S x S, normalised, once on the device (uint8 N x H x W x 3 from the cache before that).
        label: The N labels (``None`` for images to predict).
        index: Each image's position in its split.
        error: Per image, why it could not be read (``""`` when it could): the DataModule stops on it.
        views: In training, the 2N images of one forward pass: the N augmented images, then their exact mirrors
            (``image`` and :attr:`mirror` are its two halves).
    """

    image: Tensor
    label: Optional[Tensor] = None
    index: Optional[Tensor] = None
    error: Optional[list[str]] = None
    views: Optional[Tensor] = None

    def __len__(self) -> int:
        return len(self.image)

    @property
    def mirror(self) -> Optional[Tensor]:
        return None if self.views is None else self.views[len(self.views) // 2 :]

    def with_views(self, views: Tensor) -> FaceBatch:
        """This batch trained as ``views`` (N augmented images, then their mirrors)."""
        self.views, self.image = views, views[: len(views) // 2]
        return self

    def to(self, device: torch.device | str, non_blocking: Optional[bool] = None) -> FaceBatch:
        """This batch with its tensors on ``device`` (Lightning's transfer calls it, instead of walking the fields
        as a collection); ``image`` stays the first half of ``views`` when it was. Asynchronous to a GPU."""
        target = torch.device(device)
        asynchronous = target.type not in ("cpu", "mps") if non_blocking is None else non_blocking
        moved: dict[str, Any] = {
            f.name: value.to(target, non_blocking=asynchronous)
            for f in fields(self)
            if isinstance(value := getattr(self, f.name), Tensor) and f.name != "image"
        }
        views, n = moved.get("views"), len(self.image)
        if views is not None and self.views is not None and _same_memory(self.image, self.views[:n]):
            moved["image"] = views[:n]  # still the first half of the views, not a second copy
        else:
            moved["image"] = self.image.to(target, non_blocking=asynchronous)
        return replace(self, **moved)

    def fields(self) -> dict[str, Any]:
        """Every field that is set but the pixels, by name (for the rows of a prediction)."""
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("image", "views")}
        return {name: value for name, value in named.items() if value is not None}


@dataclass
class MediaBatch(FaceBatch):
    """Faces found in photos and video frames for ``nla predict``: where each came from and whether it could be read.

    Args:
        path: The file of each item.
        ok: Whether the item could be read (a row that says why is written when not).
        frame, time_s: The video frame and its time (-1 and NaN for a photo).
        face, track: The face's number in its picture and its track over a video's frames (-1: none).
        box, landmarks: The face's box and its eyes' and mouth's points (-1 and NaN where no face was looked for).
    """

    path: Optional[list[str]] = None
    ok: Optional[Tensor] = None
    frame: Optional[Tensor] = None
    time_s: Optional[Tensor] = None
    face: Optional[Tensor] = None
    track: Optional[Tensor] = None
    box: Optional[Tensor] = None
    landmarks: Optional[Tensor] = None


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


def collate_faces(items: list[dict[str, Any]]) -> FaceBatch:
    """A :class:`FaceBatch` of dataset items (dicts with ``image``, ``label``, ``index``, ``error`` and, in
    training, ``mirror``)."""
    batch = default_collate(items)
    mirror = batch.pop("mirror", None)
    if mirror is not None:
        batch["views"] = torch.cat([batch["image"], mirror])
    return FaceBatch(**batch)


def collate_media(items: list[dict[str, Any]]) -> MediaBatch:
    """A :class:`MediaBatch` of :class:`nla.data.prediction.PredictionMedia` items (their detector objects stay
    behind)."""
    return MediaBatch(**default_collate([{k: v for k, v in item.items() if not k.startswith("_")} for item in items]))


class StepOutput(TypedDict, total=False):
    """What :meth:`nla.module.NLAModule.training_step` returns and the epoch callbacks read: the loss, and per
    image its probabilities, label, NAW weight (when the criterion has NAW) and position in the split."""

    loss: Tensor
    probs: Tensor
    labels: Tensor
    weights: Tensor
    index: Tensor


class EpochOutputs:
    """A training epoch's :class:`StepOutput` s, kept on the device as the steps give them (so that no step waits for
    the host) and moved to the host once, by the first reader of the epoch (:meth:`gather`)."""

    KEPT = ("probs", "labels", "weights", "index")

    def __init__(self) -> None:
        self._steps: list[dict[str, Tensor]] = []
        self._gathered: Optional[dict[str, Tensor]] = None

    def reset(self) -> None:
        self._steps, self._gathered = [], None

    def add(self, output: StepOutput) -> None:
        self._steps.append({key: output[key].detach() for key in self.KEPT if key in output})  # type: ignore[literal-required]
        self._gathered = None

    def gather(
        self, across: Optional[Callable[[dict[str, Tensor]], dict[str, Tensor]]] = None
    ) -> Optional[dict[str, Tensor]]:
        """The epoch so far on the host, one tensor per field (``labels`` and ``index`` as int64, the rest float32);
        ``None`` before any step. A field that some steps lack is left out. Where the steps say which images they
        held (``index``), each image is in it once, as its first draw of the epoch gave it (a sampler that draws with
        replacement, or a distributed sampler padding the processes' shares, repeats images).

        ``across``, in a run of several processes, takes this process's fields and gives every process's, end to end
        (:func:`concatenated_over_ranks`): the result then holds the whole epoch. Every process must then call
        :meth:`gather` at the same points (a result is kept until the next step, so later calls gather nothing)."""
        if self._gathered is None and self._steps:
            shared = [key for key in self._steps[0] if all(key in step for step in self._steps)]
            gathered = {key: torch.cat([step[key] for step in self._steps]) for key in shared}
            if across is not None:
                gathered = across(gathered)
            if "index" in gathered:
                kept = first_occurrences(gathered["index"])
                gathered = {key: value[kept] for key, value in gathered.items()}
            self._gathered = {
                key: value.cpu().long() if key in ("labels", "index") else value.cpu().float()
                for key, value in gathered.items()
            }
        return self._gathered


def concatenated_over_ranks(columns: dict[str, Tensor], all_gather: Callable[[Tensor], Any]) -> dict[str, Tensor]:
    """Every process's ``columns``, each end to end in rank order, where the processes' counts of rows differ (every
    column of a process has as many rows); ``all_gather`` is Lightning's
    (``LightningModule.all_gather``: one tensor in, the processes' tensors stacked out). One collective for the counts,
    then one per column."""
    first = next(iter(columns.values()), None)
    if first is None:
        return {}
    mine = len(first)
    if any(len(value) != mine for value in columns.values()):
        raise ValueError(f"columns of different lengths: { {key: len(value) for key, value in columns.items()} }")
    lengths = [int(n) for n in all_gather(torch.tensor(mine, device=first.device)).flatten()]
    gathered = {}
    for key, tensor in columns.items():
        padded = tensor.new_zeros((max(lengths), *tensor.shape[1:]))
        padded[:mine] = tensor
        stacked = all_gather(padded)
        gathered[key] = torch.cat([stacked[rank, :length] for rank, length in enumerate(lengths)])
    return gathered


def first_occurrences(values: Tensor) -> Tensor:
    """The positions of each value's first occurrence in ``values``, in their order."""
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return order[first].sort().values


def training_views(batch: Any, mirrored: bool) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` for one forward pass: the batch's images, then (``mirrored``, for a consistency term) their
    mirrors. nla's DataModules deliver them ready as :attr:`FaceBatch.views`; other batches are mirrored here."""
    images, labels = unpack(batch)
    if labels is None:
        raise ValueError("a training batch needs labels: (images, labels) or a FaceBatch with labels")
    if not mirrored:
        return images, labels
    views = batch.views if isinstance(batch, FaceBatch) else None
    return (torch.cat([images, images.flip(-1)]) if views is None else views), labels


def unpack(batch: Any) -> tuple[Tensor, Optional[Tensor]]:
    """``(images, labels)`` of a :class:`FaceBatch`, an ``(images, labels)`` pair, a mapping with ``image`` and
    ``label`` (or ``images`` and ``labels``), or images alone (labels ``None``)."""
    if isinstance(batch, FaceBatch):
        return batch.image, batch.label
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        images = next((batch[key] for key in ("image", "images") if key in batch), None)
        if images is None:
            raise ValueError(f"a batch given as a mapping needs its images under 'image'; it has {sorted(batch)}")
        return images, next((batch[key] for key in ("label", "labels") if key in batch), None)
    return batch[0], (batch[1] if len(batch) > 1 else None)


def check_labels(labels: Tensor, num_classes: int, where: str) -> None:
    """Refuse labels outside ``0..num_classes-1`` in one line (read where a step failed, not on every step: reading
    them would make the host wait for the device)."""
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if len(outside):
        raise ValueError(
            f"a {where} batch has label {int(outside[0])}; the model has {num_classes} classes, labels "
            f"0..{num_classes - 1}"
        )
