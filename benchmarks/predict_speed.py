"""How many photos a second ``nla predict`` handles with face detection, against the same work one photo at a time.

Photos are real RAF-DB test faces pasted into larger backgrounds (``benchmarks/face_detection.py``), written as JPEG
files. Both paths decode each file, find its faces (RetinaFace), crop the largest as the training images were
aligned, and apply a ResNet-18:

- batched: nla's own predict path, ``Trainer.predict`` over ``FERDataModule.predict_dataloader`` (decoding,
  detection and cropping in ``--workers`` DataLoader workers, the model on full batches), writing predictions.csv;
- one at a time: the same steps in one process, the model on a batch of one photo, as a simple script would.

Rounds alternate the two paths; medians and ranges of photos per second.

    python -m benchmarks.predict_speed --data-root ../shared/data/rafdb \
        --json benchmarks/results/predict-speed-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from lightning.pytorch import Trainer

from benchmarks.face_detection import composites
from nla import NLAModule
from nla.callbacks.predictions import PredictionWriter
from nla.data import RAFDBDataModule, eval_transform, load_image, read_rafdb
from nla.data.prediction import FaceSettings, Prediction
from nla.data.sources.rafdb import MEAN, STD
from nla.faces import FaceDetector
from nla.preprocessing import Preprocessing


def write_photos(root: str, folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (photo, _, _) in enumerate(composites(read_rafdb(root, "test").paths, count, seed=7)):
        path = folder / f"photo{k:04d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(str(path))
    return paths


def batched(model: NLAModule, folder: Path, args, out: Path) -> float:
    data = RAFDBDataModule(
        prediction=Prediction(root=str(folder)),
        faces=FaceSettings(detect=True),
        preprocessing=Preprocessing(image_size=args.image_size),
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PredictionWriter(str(out))],
        default_root_dir=str(out.parent),
    )
    start = time.perf_counter()
    trainer.predict(model, datamodule=data, return_predictions=False)
    return time.perf_counter() - start


def one_at_a_time(model: NLAModule, paths: list[str], args) -> float:
    detector = FaceDetector("retinaface")
    transform = eval_transform(args.image_size, MEAN, STD)
    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = load_image(path)
            faces = detector.faces(image)
            crop = detector.crop(image, faces[0], args.image_size) if faces else image
            model(transform(image=crop)["image"][None]).softmax(1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp())
    paths = write_photos(args.data_root, work / "photos", args.photos)
    model = NLAModule(num_classes=7).eval()  # the speed does not depend on the weights
    one_at_a_time(model, paths[:8], args)  # warm-up
    speeds: dict[str, list[float]] = {"batched": [], "one at a time": []}
    for round_ in range(args.rounds):
        speeds["batched"].append(args.photos / batched(model, work / "photos", args, work / f"out{round_}.csv"))
        speeds["one at a time"].append(args.photos / one_at_a_time(model, paths, args))
        print({name: f"{values[-1]:.1f} photos/s" for name, values in speeds.items()}, flush=True)
    results = {
        "photos": args.photos,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "photos_per_s": {name: statistics.median(values) for name, values in speeds.items()},
        "range": {name: [min(values), max(values)] for name, values in speeds.items()},
    }
    results["batched_over_one_at_a_time"] = (
        results["photos_per_s"]["batched"] / results["photos_per_s"]["one at a time"]
    )
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
