"""Protocols that change the training labels: label noise (symmetric, or along a confusion matrix) and long-tailed
subsets.

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

from nla.class_names import canonical
from nla.data.samples import DataError, Samples, check_unique_names, read_text_lines

NoiseSource = Literal["auto", "standard_file", "generate"]
NoiseKind = Literal["symmetric", "pair_flip", "annotator", "matrix"]


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


def add_class_conditional_noise(
    labels: Sequence[int] | np.ndarray, rate: float, transition: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional noise: in each class i exactly ``round(rate * n_i)`` labels flip, each to class j with
    probability ``transition[i, j]`` (rows sum to 1, the diagonal is 0), so every class is ``rate`` noisy and its
    wrong labels follow the matrix. Returns ``(noisy_labels, flipped_mask)``, the same for the same ``seed``."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= rate < 1.0:
        raise DataError(f"noise rate {rate} is outside [0, 1); give the share of training labels to flip, e.g. 0.3")
    rng = np.random.default_rng(seed)
    noisy, mask = labels.copy(), np.zeros(len(labels), dtype=bool)
    for i in range(len(transition)):
        members = np.flatnonzero(labels == i)
        flip = rng.choice(members, size=round(rate * len(members)), replace=False)
        noisy[flip] = rng.choice(len(transition), size=len(flip), p=transition[i])
        mask[flip] = True
    return noisy, mask


def noise_transition(kind: NoiseKind, class_names: Sequence[str], matrix_file: Optional[Path] = None) -> np.ndarray:
    """The K x K matrix that class-conditional noise flips along, in the order of ``class_names``:

    - ``pair_flip``: class i to class i + 1 (the last to the first), the pair noise of the noisy-label literature;
    - ``annotator``: where FER+'s ten annotators disagree with the majority (``ferplus.VOTE_CONFUSION``), matched to
      the classes by name (anger/angry, happiness/happy, ...), without the classes the data lacks;
    - ``matrix``: a CSV file, a header of class names, then one row per class: its name and its K shares.
    Rows are made to sum to 1 over the other classes."""
    k = len(class_names)
    if kind == "pair_flip":
        matrix = np.roll(np.eye(k), 1, axis=1)
    elif kind == "annotator":
        from nla.data.sources.ferplus import CLASSES_8, VOTE_CONFUSION

        known = {canonical(name): i for i, name in enumerate(CLASSES_8)}
        missing = [name for name in class_names if canonical(name) not in known]
        if missing:
            raise DataError(f"noise_kind annotator: FER+'s annotators have no class {missing}; use pair_flip or matrix")
        order = [known[canonical(name)] for name in class_names]
        matrix = np.asarray(VOTE_CONFUSION)[np.ix_(order, order)]
    elif kind == "matrix":
        matrix = _read_matrix(matrix_file, class_names)
    else:
        raise DataError(f"noise kind {kind!r} flips along no matrix")
    np.fill_diagonal(matrix, 0.0)
    totals = matrix.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        empty = [class_names[int(i)] for i in np.flatnonzero(totals[:, 0] <= 0)]
        raise DataError(f"the noise matrix gives no other class for {empty}")
    return matrix / totals


def _read_matrix(path: Optional[Path], class_names: Sequence[str]) -> np.ndarray:
    if path is None:
        raise DataError("noise_kind matrix needs --data.protocol.noise_matrix, a CSV of class names and shares")
    if not path.is_file():
        raise DataError(f"noise matrix {str(path)!r} does not exist")
    lines = read_text_lines(path)
    if not lines:
        raise DataError(f"{path}: empty; expected a header of class names, then one row per class")
    header = [name.strip() for name in lines[0][1].split(",")]
    header = header[1:] if len(header) == len(class_names) + 1 else header
    if sorted(header) != sorted(class_names):
        raise DataError(f"{lines[0][0]}: classes {header}; expected the data's {list(class_names)}")
    rows: dict[str, list[float]] = {}
    given: dict[str, str] = {}
    for origin, line in lines[1:]:
        cells = [cell.strip() for cell in line.split(",")]
        try:
            values = [float(v) for v in cells[1:]]
        except ValueError:
            values = []
        fits = len(values) == len(header) and all(math.isfinite(v) and v >= 0 for v in values)
        if cells[0] not in class_names or not fits:
            raise DataError(f"{origin}: expected a class name and {len(header)} finite shares >= 0, got {line!r}")
        if cells[0] in given:
            raise DataError(f"{origin}: a second row for {cells[0]!r} ({given[cells[0]]} has the first); one per class")
        rows[cells[0]], given[cells[0]] = values, origin
    if sorted(rows) != sorted(class_names):
        raise DataError(f"{path}: rows for {sorted(rows)}; expected one for each of {list(class_names)}")
    columns = [header.index(name) for name in class_names]
    return np.asarray([[rows[name][c] for c in columns] for name in class_names], dtype=np.float64)


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
        noise_kind: ``symmetric`` (to any other class, uniformly), or class-conditional, ``rate`` in each class,
            along a matrix: ``pair_flip`` (class i to i + 1), ``annotator`` (where FER+'s annotators disagree with
            the majority) or ``matrix`` (``noise_matrix``). Class-conditional noise is always generated.
        noise_matrix: A CSV of class names and shares for ``noise_kind: matrix``.
        imbalance_factor: Subsample to a long tail whose largest class is this many times its smallest.
        long_tail_seed: Seed of the long-tail draw.
        long_tail_class_order: Class names from largest to smallest; ``None`` orders by natural frequency.
    """

    train_label_file: Optional[str] = None
    noise_rate: float = 0.0
    noise_seed: int = 0
    noise_source: NoiseSource = "auto"
    noise_kind: NoiseKind = "symmetric"
    noise_matrix: Optional[str] = None
    imbalance_factor: Optional[float] = None
    long_tail_seed: int = 0
    long_tail_class_order: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.noise_rate, (int, float)) and 0.0 <= self.noise_rate < 1.0):
            raise DataError(
                f"noise_rate {self.noise_rate} is outside [0, 1); give the share of training labels to flip, e.g. 0.3"
            )
        # Where labels go (a kind, a matrix) is refused without a rate that flips any, rather than ignored in silence;
        # how they are drawn (noise_source, a seed) may be set for a whole grid, clean cells included.
        if self.noise_matrix and self.noise_kind != "matrix":
            raise DataError(
                f"noise_matrix {self.noise_matrix!r} is read with noise_kind matrix only (noise_kind is "
                f"{self.noise_kind}); set --data.protocol.noise_kind matrix"
            )
        if self.noise_kind != "symmetric" and self.noise_rate == 0:
            raise DataError(
                f"noise_kind {self.noise_kind} flips no label with noise_rate 0; give --data.protocol.noise_rate, "
                "e.g. 0.3"
            )
        if self.imbalance_factor is not None and not (
            math.isfinite(self.imbalance_factor) and self.imbalance_factor >= 1
        ):
            raise DataError(
                f"imbalance_factor {self.imbalance_factor} is below 1; it is the largest class count over the smallest"
            )

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
            if self.noise_kind == "symmetric":
                noisy, _ = add_label_noise(samples.labels, self.noise_rate, samples.num_classes, self.noise_seed)
            else:
                matrix = resolve(self.noise_matrix) if self.noise_matrix else None
                transition = noise_transition(self.noise_kind, samples.classes, matrix)
                noisy, _ = add_class_conditional_noise(samples.labels, self.noise_rate, transition, self.noise_seed)
            samples = samples.relabelled(noisy)
            notes.append(
                f"{self.noise_kind} noise {self.noise_rate:.0%} generated with seed {self.noise_seed}: "
                f"{int(samples.flipped.sum())} labels flipped"
            )
        return samples, notes

    def _standard_file(self, find: Callable[[float], Optional[Path]]) -> Optional[Path]:
        if self.noise_rate == 0 or self.noise_source == "generate" or self.noise_kind != "symmetric":
            return None
        path = find(self.noise_rate)
        if path is None:
            if self.noise_source == "standard_file":
                raise DataError(
                    f"noise_source standard_file: this dataset has no standard noisy-label file for "
                    f"noise_rate {self.noise_rate}; set --data.protocol.noise_source generate"
                )
            return None
        if not path.is_file():
            raise DataError(
                f"noise_rate {self.noise_rate} uses the dataset's standard noisy-label file {str(path)!r}, "
                "which does not exist; add it (the paper's protocol), or set --data.protocol.noise_source generate "
                "to flip labels with the seeded generator instead"
            )
        return path
