"""FER+: FER2013 images relabelled by ten annotators, labelled by the FER+ majority vote."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from nla.data.samples import DataError, Samples, csv_records

# The vote columns, in file order. The first eight are emotions; the label index is the column index.
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
CLASSES_8 = VOTE_COLUMNS[:8]
CLASSES_7 = VOTE_COLUMNS[:7]  # contempt dropped
SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
RELEASE_USAGE = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
Split = Literal["train", "valid", "test"]
LabelSource = Literal["auto", "fer2013new", "label_csv"]

#: :func:`vote_confusion` of FER+'s training split (fer2013new.csv, 2026 copy): row i gives how often annotators put
#: an image of majority class i in each other class, in the order of :data:`CLASSES_8`. Fear is taken for surprise
#: (0.48), disgust for anger (0.32), sadness for neutral (0.65). It is the ``annotator`` label-noise protocol's matrix
#: (:mod:`nla.data.protocols`); ``tests/test_protocols.py`` recomputes it from a real copy.
VOTE_CONFUSION = (
    (0.0, 0.1420, 0.0814, 0.4883, 0.1257, 0.0379, 0.0223, 0.1024),
    (0.5318, 0.0, 0.2634, 0.0608, 0.0522, 0.0265, 0.0225, 0.0429),
    (0.2726, 0.1713, 0.0, 0.0512, 0.0704, 0.0161, 0.4051, 0.0133),
    (0.6499, 0.0566, 0.0395, 0.0, 0.0933, 0.0500, 0.0694, 0.0413),
    (0.2814, 0.1028, 0.2319, 0.1236, 0.0, 0.1300, 0.0916, 0.0387),
    (0.2282, 0.0492, 0.0515, 0.2304, 0.3199, 0.0, 0.0336, 0.0872),
    (0.1283, 0.0352, 0.4844, 0.2081, 0.0893, 0.0430, 0.0, 0.0117),
    (0.4133, 0.0613, 0.0347, 0.1493, 0.1227, 0.1920, 0.0267, 0.0),
)


def classes_for(num_classes: int) -> tuple[str, ...]:
    if num_classes not in (7, 8):
        raise DataError(f"FER+ has 8 classes, or 7 without contempt; got num_classes={num_classes}")
    return CLASSES_8 if num_classes == 8 else CLASSES_7


def majority_vote(votes: Sequence[int]) -> Optional[int]:
    """The FER+ majority label of ten vote counts, or ``None`` for unknown / not-a-face.

    Every column with one vote or fewer is zeroed (as FER+'s own reader does, unknown and NF
    included); the largest remaining count wins if it is more than half of the remaining total,
    unknown and NF counted in that total.
    """
    counts = [0 if v <= 1 else v for v in votes]
    total = sum(counts)
    best = int(np.argmax(counts))
    if total == 0 or counts[best] * 2 <= total or best >= 8:
        return None
    return best


def read_ferplus(
    root: str | Path, split: Split = "train", num_classes: Literal[7, 8] = 8, label_source: LabelSource = "auto"
) -> Samples:
    """One FER+ split, with votes from ``fer2013new.csv`` (the current release), else from the split's ``label.csv``.

    An image listed twice with the same votes (three training images of the release) is used once; listed
    twice with different votes, both kept by the vote, it stops the read.
    """
    root = Path(root)
    if split not in SPLIT_FOLDERS:
        raise DataError(f"FER+ has splits {list(SPLIT_FOLDERS)}, not {split!r}")
    classes = classes_for(num_classes)
    folder = root / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise DataError(
            f"FER+ folder {str(folder)!r} does not exist; expected {list(SPLIT_FOLDERS.values())} under the root"
        )
    release = root / "fer2013new.csv"
    if label_source == "fer2013new" or (label_source == "auto" and release.is_file()):
        rows = _read_release(release, split)
    else:
        rows = _read_label_csv(folder / "label.csv")
    kept: dict[str, tuple[int, list[int], str]] = {}
    dropped, repeated = 0, []
    for name, votes, origin in rows:
        label = majority_vote(votes)
        if label is None or label >= num_classes:
            dropped += 1
            continue
        if name in kept:
            _, first_votes, first_origin = kept[name]
            if first_votes != votes:
                raise DataError(
                    f"{origin}: lists image {name!r} again with other votes than {first_origin}; "
                    "each image may appear once"
                )
            repeated.append(name)  # the release lists a few images twice with the same votes: used once
            continue
        kept[name] = (label, votes, origin)
    notes = (
        [
            f"{SPLIT_FOLDERS[split]}: {dropped} images left out by the majority vote (unknown, not a face"
            + (", or contempt" if num_classes == 7 else "")
            + ")"
        ]
        if dropped
        else []
    )
    if repeated:
        notes.append(
            f"{SPLIT_FOLDERS[split]}: {len(repeated)} images listed twice with the same votes, used once: "
            f"{', '.join(repeated[:5])}"
        )
    names = list(kept)
    return Samples(
        [str(folder / name) for name in names],
        np.asarray([kept[n][0] for n in names], dtype=np.int64),
        classes,
        names,
        [kept[n][2] for n in names],
        notes=notes,
    )


def _parse_votes(values: Sequence[str], origin: str) -> list[int]:
    try:
        votes = [int(v) for v in values]
    except ValueError:
        raise DataError(f"{origin}: vote counts {list(values)} are not all integers") from None
    if len(votes) != len(VOTE_COLUMNS) or min(votes) < 0:
        raise DataError(f"{origin}: expected {len(VOTE_COLUMNS)} non-negative vote counts {VOTE_COLUMNS}, got {values}")
    return votes


def _read_release(path: Path, split: str) -> list[tuple[str, list[int], str]]:
    if not path.is_file():
        raise DataError(f"FER+ release file {str(path)!r} does not exist")
    rows = []
    reader = csv_records(path)
    header = next(reader, None)
    if header is None or header[:2] != ["Usage", "Image name"]:
        raise DataError(f"{path}:1: expected the header 'Usage,Image name,{','.join(VOTE_COLUMNS)}', got {header!r}")
    for number, record in enumerate(reader, start=2):
        origin = f"{path}:{number}"
        if len(record) != 2 + len(VOTE_COLUMNS):
            raise DataError(f"{origin}: expected {2 + len(VOTE_COLUMNS)} columns, got {len(record)}")
        usage, name = record[0], record[1].strip()
        if usage not in RELEASE_USAGE:
            raise DataError(f"{origin}: Usage {usage!r} is not one of {list(RELEASE_USAGE)}")
        if name and RELEASE_USAGE[usage] == split:  # rows without a name are all not-a-face
            rows.append((name, _parse_votes(record[2:], origin), origin))
    return rows


def _read_label_csv(path: Path) -> list[tuple[str, list[int], str]]:
    if not path.is_file():
        raise DataError(f"FER+ label file {str(path)!r} does not exist, and there is no fer2013new.csv at the root")
    rows = []
    for number, record in enumerate(csv_records(path), start=1):
        origin = f"{path}:{number}"
        if len(record) != 2 + len(VOTE_COLUMNS):
            raise DataError(f"{origin}: expected name, face box and {len(VOTE_COLUMNS)} vote counts, got {record!r}")
        rows.append((record[0].strip(), _parse_votes(record[2:], origin), origin))
    return rows


def read_votes(root: str | Path, split: Split = "train", label_source: LabelSource = "auto") -> dict[str, list[int]]:
    """Every image's ten vote counts (the emotions, unknown, NF) by image name, from the same file :func:`read_ferplus`
    reads: the ground truth of ambiguity that FER+'s annotators give."""
    root = Path(root)
    release = root / "fer2013new.csv"
    if label_source == "fer2013new" or (label_source == "auto" and release.is_file()):
        rows = _read_release(release, split)
    else:
        rows = _read_label_csv(root / SPLIT_FOLDERS[split] / "label.csv")
    return {name: votes for name, votes, _ in rows}


def vote_confusion(votes: Sequence[Sequence[int]]) -> np.ndarray:
    """How often FER+'s annotators put an image in class j when its majority says i: 8 x 8 over the emotions, each
    row the votes for the other classes of the images of majority i, as shares (the diagonal is 0). Images without a
    majority are left out, as are unknown and NF votes."""
    counts = np.zeros((8, 8))
    for row in votes:
        label = majority_vote(row)
        if label is not None:
            counts[label] += np.asarray(row[:8], dtype=np.float64)
    np.fill_diagonal(counts, 0.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
