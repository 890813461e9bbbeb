"""What ``nla predict`` writes: ``predictions.csv``, a row per image, video frame or face, and beside it the faces of
each photo boxed and labelled (``--data.prediction.draw_faces``) and a timeline of each video's expressions.

Rows are written batch by batch as the model predicts, so a long video never fills the memory, and sorted by file,
frame and face when the prediction ends (workers read files in parallel, so batches arrive in any order). A file
that cannot be read, a video that stops decoding and a picture without a face each get a row that says why.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from nla.callbacks.console import say
from nla.data.files import is_video, load_image
from nla.data.samples import DataError
from nla.rundir import free_path

FACE_COLUMNS = ["face", "face_x", "face_y", "face_width", "face_height"]
LANDMARK_COLUMNS = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "mouth_x", "mouth_y"]


class PredictionWriter(BasePredictionWriter):
    """Writes ``nla predict`` results to a CSV: the path (with the frame and its time for a video, and the face with
    its box and landmarks when faces are detected), the predicted class, the probability of every class, the error.

    Args:
        output: The CSV to write; ``None`` writes ``predictions.csv`` in the command's own folder. An explicit
            path that exists is refused.
    """

    def __init__(self, output: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.path: Optional[Path] = None
        self._handle: Any = None
        self._writer: Any = None
        self._columns: list[str] = []
        self._rows = 0
        self.unreadable: list[str] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.output:
            path = Path(self.output)
            if path.exists():
                raise FileExistsError(
                    f"prediction file {str(path)!r} exists and is not overwritten; choose another output"
                )
        else:
            path = free_path(Path(trainer.default_root_dir) / "predictions.csv")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.unreadable, self._rows = path, [], 0
        data = getattr(trainer, "datamodule", None)
        videos = any(is_video(p) for p in getattr(data, "_predict_paths", None) or [])
        faces = getattr(data, "detector", None) is not None
        names = [f"prob_{name}" for name in getattr(pl_module, "class_names", [])]
        self._columns = ["path", *(["frame", "time_s"] if videos else [])]
        self._columns += [*FACE_COLUMNS, *(["track"] if videos else []), *LANDMARK_COLUMNS] if faces else []
        self._columns += ["prediction", *names, "error"]
        self._handle = open(path, "w", newline="")  # noqa: SIM115  (written batch by batch, closed at the end)
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self._columns)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: Any,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        names = pl_module.class_names
        probs = prediction["probs"]
        count = len(probs)
        paths = prediction.get("path") or [str(self._rows + i) for i in range(count)]
        ok = prediction.get("ok", [True] * count)
        for i in range(count):
            values: dict[str, Any] = {"path": paths[i], "error": prediction.get("error", [""] * count)[i]}
            values.update(_position(prediction, i))
            if bool(ok[i]):
                values["prediction"] = names[int(probs[i].argmax())]
                values.update({f"prob_{n}": f"{p:.6f}" for n, p in zip(names, probs[i].tolist())})
            else:
                self.unreadable.append(paths[i])
            self._writer.writerow([values.get(column, "") for column in self._columns])
        self._rows += count

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._handle is None or self.path is None:
            return
        self._handle.close()
        self._handle = None
        rows = sort_rows(self.path)
        if self.unreadable:
            rank_zero_warn(
                f"{len(self.unreadable)} image(s) could not be predicted; their rows in {self.path} say why: "
                f"{self.unreadable[:10]}"
            )
        class_names = list(getattr(pl_module, "class_names", []))
        settings = getattr(getattr(trainer, "datamodule", None), "prediction", None)
        draw_faces = bool(getattr(settings, "draw_faces", False))
        drawn = draw_outputs(rows, class_names, self.path.parent, draw_faces)
        files = len({row["path"] for row in rows})
        what = f"{self._rows} row{'s' if self._rows != 1 else ''} for {files} file{'s' if files != 1 else ''}"
        if "face" not in self._columns and "frame" not in self._columns:
            what = f"{self._rows} image{'s' if self._rows != 1 else ''}"
        if self._rows and len(self.unreadable) == self._rows:  # a run that predicted nothing did not succeed
            raise DataError(f"none of the {files} file(s) could be predicted; the rows of {self.path} say why")
        say(trainer, f"predictions for {what} written to {self.path}" + (f"; {drawn}" if drawn else ""))


def _position(prediction: dict[str, Any], i: int) -> dict[str, str]:
    """The frame, face, track, box and landmark columns of item ``i`` of a batch, as text ("" where not known)."""
    values: dict[str, str] = {}
    if "frame" in prediction and int(prediction["frame"][i]) >= 0:
        values["frame"] = str(int(prediction["frame"][i]))
        values["time_s"] = f"{float(prediction['time_s'][i]):.3f}"
    if "face" in prediction and int(prediction["face"][i]) >= 0:
        values["face"] = str(int(prediction["face"][i]))
        if int(prediction["track"][i]) >= 0:
            values["track"] = str(int(prediction["track"][i]))
        box = prediction["box"][i].tolist()
        values.update({key: f"{v:.0f}" for key, v in zip(FACE_COLUMNS[1:], box)})
        points = prediction["landmarks"][i].tolist()
        values.update({key: f"{v:.1f}" for key, v in zip(LANDMARK_COLUMNS, points) if not math.isnan(v)})
    return values


def sort_rows(path: Path) -> list[dict[str, str]]:
    """Rewrite the CSV sorted by file, frame and face (rows of one picture keep their order); return its rows."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)

    def key(row: dict[str, str]) -> tuple[str, int, int]:
        return row["path"], int(row.get("frame") or -1), int(row.get("face") or -1)

    rows.sort(key=key)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def draw_outputs(rows: list[dict[str, str]], class_names: list[str], folder: Path, draw_faces: bool) -> str:
    """The timelines of the videos and, with ``draw_faces``, the photos with their faces; what was drawn."""
    by_file: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_file[row["path"]].append(row)
    drawn: dict[str, list[tuple[str, str]]] = {"timelines": [], "faces": []}
    for path, file_rows in by_file.items():
        if is_video(path):
            figure = expression_timeline(file_rows, class_names, Path(path).name)
            if figure is not None:
                (folder / "timelines").mkdir(exist_ok=True)
                target = free_path(folder / "timelines" / f"{Path(path).stem}.png")
                figure.savefig(target, dpi=100)
                drawn["timelines"].append((path, target.name))
        elif draw_faces and any(row.get("face") for row in file_rows):
            try:
                image = load_image(path)
            except Exception:  # the file changed since it was predicted: its row already says what it held
                continue
            (folder / "faces").mkdir(exist_ok=True)
            target = free_path(folder / "faces" / f"{Path(path).stem}.png")
            faces_figure(image, file_rows).savefig(target, dpi=100)
            drawn["faces"].append((path, target.name))
    for kind, pictures in drawn.items():  # x.jpg and x.png, or a/clip.mp4 and b/clip.mp4, share a stem
        if pictures:
            with open(folder / kind / "index.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([("path", "picture"), *pictures])
    timelines, photos = len(drawn["timelines"]), len(drawn["faces"])
    done = [f"{timelines} video timeline(s) in {folder / 'timelines'}" if timelines else ""]
    done.append(f"{photos} photo(s) with their faces in {folder / 'faces'}" if photos else "")
    return "; ".join(text for text in done if text)


def expression_timeline(rows: list[dict[str, str]], class_names: list[str], title: str) -> Optional[Figure]:
    """Each class's probability over a video's time, one panel per face track (or for the whole frame)."""
    predicted = [row for row in rows if row.get("prediction")]
    if not predicted:
        return None
    tracks: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in predicted:
        tracks[row.get("track") or "0"].append(row)
    shown = sorted(tracks.items(), key=lambda item: -len(item[1]))[:6]  # the longest tracks
    figure = Figure(figsize=(9, 2.4 * len(shown) + 0.6))
    for k, (track, track_rows) in enumerate(shown):
        axis = figure.add_subplot(len(shown), 1, k + 1)
        times = np.asarray([float(row["time_s"]) for row in track_rows])
        for name in class_names:
            axis.plot(times, [float(row[f"prob_{name}"]) for row in track_rows], label=name, linewidth=1.2)
        axis.set(ylim=(0, 1), ylabel="probability", title=f"face {track}" if "track" in rows[0] else None)
        if k == len(shown) - 1:
            axis.set_xlabel("time (s)")
        if k == 0:
            axis.legend(loc="upper right", fontsize=7, ncol=4)
    figure.suptitle(f"Expressions over time: {title}")
    figure.tight_layout()
    return figure


def faces_figure(image: np.ndarray, rows: list[dict[str, str]]) -> Figure:
    """The photo with each face's box, number and predicted expression."""
    height, width = image.shape[:2]
    figure = Figure(figsize=(8, 8 * height / max(width, 1)))
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(image)
    axis.axis("off")
    for row in rows:
        if not row.get("face") or not row.get("face_x"):
            continue
        x, y, w, h = (float(row[key]) for key in FACE_COLUMNS[1:])
        axis.add_patch(_rectangle(x, y, w, h))
        label = f"{row['face']}: {row['prediction'] or row['error']}"
        axis.text(x, y - 4, label, color="yellow", fontsize=9, va="bottom", backgroundcolor=(0, 0, 0, 0.5))
    return figure


def _rectangle(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, edgecolor="yellow", linewidth=2)
