"""Protocols that change the training labels: symmetric label noise and long-tailed subsets.

They act on arrays of labels and never touch the test split; the DataModule applies them to the
training split only. Both write and read the same plain label file, one ``<name> <label>`` per line
(the format of RAF-DB's ``list_patition_label.txt`` and ``noise0{1,2,3}.txt``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from nla.data.samples import DataError, Samples, check_unique_names, read_text_lines


def add_label_noise(
    labels: Sequence[int] | np.ndarray, rate: float, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric noise: flip exactly ``round(rate * N)`` labels, each to a uniformly chosen *different* class.

    Returns ``(noisy_labels, flipped_mask)``; the same ``seed`` always flips the same samples the same way.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate < 1.0:
        raise DataError(f"noise rate {rate} is outside [0, 1); give the share of training labels to flip, e.g. 0.3")
    if num_classes < 2:
        raise DataError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(labels), size=round(rate * len(labels)), replace=False)
    noisy = labels.copy()
    # An offset of 1..K-1 modulo K lands uniformly on every class except the given one.
    noisy[flip] = (labels[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    mask = np.zeros(len(labels), dtype=bool)
    mask[flip] = True
    return noisy, mask


def long_tail_profile(max_count: int, imbalance_factor: float, num_classes: int) -> np.ndarray:
    """n_i = floor(n_max * IF^(-i / (K - 1))) for the i-th class in order, largest first."""
    if imbalance_factor < 1:
        raise DataError(
            f"imbalance factor {imbalance_factor} is below 1; it is the largest class count over the smallest"
        )
    if num_classes == 1:
        return np.asarray([max_count])
    ranks = np.arange(num_classes)
    return np.maximum(1, np.floor(max_count * imbalance_factor ** (-ranks / (num_classes - 1)) + 1e-9)).astype(np.int64)


def long_tail_indices(
    labels: Sequence[int] | np.ndarray,
    imbalance_factor: float,
    seed: int = 0,
    class_order: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Indices of a long-tailed subset: the i-th class in ``class_order`` keeps ``long_tail_profile`` samples.

    Classes are ordered by their natural frequency, largest first, unless ``class_order`` (class
    indices) is given. A class that has fewer samples than its share keeps them all. The kept samples
    of each class are drawn at random with ``seed``; the result is sorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(labels, minlength=num_classes)
    if class_order is None:
        order = sorted(range(num_classes), key=lambda k: (-counts[k], k))
    else:
        order = [int(k) for k in class_order]
        if sorted(order) != list(range(num_classes)):
            raise DataError(f"class order {order} is not a permutation of the class indices 0..{num_classes - 1}")
    targets = long_tail_profile(int(counts[order[0]]), imbalance_factor, num_classes)
    rng = np.random.default_rng(seed)
    kept, short = [], []
    for rank, k in enumerate(order):
        members = np.flatnonzero(labels == k)
        if len(members) < targets[rank]:
            short.append(k)
        kept.append(rng.permutation(members)[: targets[rank]])
    if short:
        warnings.warn(
            f"classes {short} have fewer samples than their long-tail share and keep all of them", stacklevel=2
        )
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def write_label_file(path: str | Path, names: Sequence[str], labels: np.ndarray, code_offset: int = 0) -> Path:
    """Write ``<name> <label + code_offset>`` lines; refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"label file {str(path)!r} already exists; it is not overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name} {int(label) + code_offset}\n" for name, label in zip(names, labels)))
    return path


def read_label_file(
    path: str | Path, num_classes: int, code_offset: int = 0
) -> tuple[list[str], np.ndarray, list[str]]:
    """``(names, labels, origins)`` of a ``<name> <label>`` file, labels shifted back by ``code_offset`` and checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {str(path)!r} does not exist")
    names, labels, origins = [], [], []
    for origin, line in read_text_lines(path):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{origin}: expected '<name> <integer label>', got {line!r}")
        label = int(parts[1]) - code_offset
        if not 0 <= label < num_classes:
            raise DataError(
                f"{origin}: label {parts[1]} is outside the class range {code_offset}..{num_classes - 1 + code_offset}"
            )
        names.append(parts[0])
        labels.append(label)
        origins.append(origin)
    return names, np.asarray(labels, dtype=np.int64), origins


def apply_label_file(samples: Samples, path: str | Path, code_offset: int = 0) -> Samples:
    """The training images a label file names, with the labels it gives.

    A file that lists every image (such as RAF-DB's ``noise03.txt``) changes labels only; one that
    lists fewer (a saved long-tail subset) also selects. Rows are matched by position when the file
    names the images in the split's order, and by name otherwise.
    """
    names, labels, origins = read_label_file(path, samples.num_classes, code_offset)
    if names == samples.names[: len(names)] and len(names) == len(samples):
        return samples.relabelled(labels, origins)
    check_unique_names(names, origins)
    position = {name: i for i, name in enumerate(samples.names)}
    indices = []
    for name, origin in zip(names, origins):
        if name not in position:
            raise DataError(f"{origin}: names image {name!r}, which is not in the training split")
        indices.append(position[name])
    return samples.subset(indices).relabelled(labels, origins)


def measured_flip_rate(samples: Samples) -> float:
    return float(samples.flipped.mean()) if len(samples) else math.nan


NoiseSource = Literal["auto", "standard_file", "generate"]


@dataclass(frozen=True)
class LabelProtocol:
    """What happens to the training labels before training: a label file, symmetric noise, a long tail.

    Args:
        train_label_file: A ``<name> <label>`` file (the dataset's own label codes) giving the training
            labels, and the training images when it lists fewer (a saved subset).
        noise_rate: Share of training labels made noisy.
        noise_seed: Seed of the noise generator.
        noise_source: ``auto`` uses the dataset's standard noisy-label file for this rate where the dataset
            defines one (RAF-DB: 0.1, 0.2, 0.3; it must then be present) and the seeded generator elsewhere;
            ``standard_file`` requires the file; ``generate`` always uses the generator.
        imbalance_factor: Subsample to a long tail whose largest class is this many times its smallest.
        long_tail_seed: Seed of the long-tail draw.
        long_tail_class_order: Class names from largest to smallest; ``None`` orders by natural frequency.
    """

    train_label_file: Optional[str] = None
    noise_rate: float = 0.0
    noise_seed: int = 0
    noise_source: NoiseSource = "auto"
    imbalance_factor: Optional[float] = None
    long_tail_seed: int = 0
    long_tail_class_order: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.noise_rate, (int, float)) and 0.0 <= self.noise_rate < 1.0):
            raise DataError(
                f"noise_rate {self.noise_rate} is outside [0, 1); give the share of training labels to flip, e.g. 0.3"
            )
        if self.imbalance_factor is not None and not (
            math.isfinite(self.imbalance_factor) and self.imbalance_factor >= 1
        ):
            raise DataError(
                f"imbalance_factor {self.imbalance_factor} is below 1; it is the largest class count over the smallest"
            )

    @property
    def active(self) -> bool:
        return bool(self.train_label_file) or self.noise_rate > 0 or self.imbalance_factor is not None

    def apply(
        self,
        samples: Samples,
        standard_noise_file: Callable[[float], Optional[Path]] = lambda rate: None,
        code_offset: int = 0,
        resolve: Callable[[str], Path] = Path,
    ) -> tuple[Samples, list[str]]:
        """The training split after the protocol, and one note per step taken.

        ``standard_noise_file(rate)`` is where the dataset keeps its standard noisy-label file for ``rate``,
        or ``None`` where the dataset defines none.
        """
        notes = []
        if self.train_label_file:
            samples = apply_label_file(samples, resolve(self.train_label_file), code_offset)
            notes.append(f"labels from {self.train_label_file}")
        standard = self._standard_file(standard_noise_file)
        if standard is not None:  # a shipped file names every training image, so it goes before subsampling
            covered = len(samples)
            samples = apply_label_file(samples, standard, code_offset)
            if len(samples) != covered:
                raise DataError(
                    f"{standard} gives labels for {len(samples)} of the {covered} training images; a "
                    "standard noisy-label file must cover the whole training split"
                )
            notes.append(
                f"noise {self.noise_rate:.0%} from {standard}, measured flip rate {measured_flip_rate(samples):.2%}"
            )
        if self.imbalance_factor is not None:
            order = None
            if self.long_tail_class_order:
                unknown = [c for c in self.long_tail_class_order if c not in samples.classes]
                if unknown:
                    raise DataError(
                        f"long_tail_class_order names {unknown}, which are not among the classes "
                        f"{list(samples.classes)}"
                    )
                order = [samples.classes.index(c) for c in self.long_tail_class_order]
            samples = samples.subset(
                long_tail_indices(samples.shipped_labels, self.imbalance_factor, self.long_tail_seed, order)
            )
            notes.append(f"long tail, imbalance factor {self.imbalance_factor:g}: {len(samples)} images kept")
        if self.noise_rate > 0 and standard is None:
            noisy, _ = add_label_noise(samples.labels, self.noise_rate, samples.num_classes, self.noise_seed)
            samples = samples.relabelled(noisy)
            notes.append(
                f"noise {self.noise_rate:.0%} generated with seed {self.noise_seed}: "
                f"{int(samples.flipped.sum())} labels flipped"
            )
        return samples, notes

    def _standard_file(self, find: Callable[[float], Optional[Path]]) -> Optional[Path]:
        if self.noise_rate == 0 or self.noise_source == "generate":
            return None
        path = find(self.noise_rate)
        if path is None:
            if self.noise_source == "standard_file":
                raise DataError(
                    f"noise_source standard_file: this dataset has no standard noisy-label file for "
                    f"noise_rate {self.noise_rate}; set --data.noise_source generate"
                )
            return None
        if not path.is_file():
            raise DataError(
                f"noise_rate {self.noise_rate} uses the dataset's standard noisy-label file {str(path)!r}, "
                "which does not exist; add it (the paper's protocol), or set --data.noise_source generate "
                "to flip labels with the seeded generator instead"
            )
        return path
