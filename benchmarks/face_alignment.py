"""Does aligning the detected face help the model? A trained RAF-DB model's accuracy on RAF-DB's test faces pasted,
turned by up to 30 degrees, into larger photos, cropped by the detector with and without alignment, beside its
accuracy on the original aligned crops.

- original: the test split's own aligned crops (what the model is tested on);
- detected, box crop: RetinaFace's box, the square an aligned crop covers around it (``FaceAlignment``), not turned;
- detected, aligned: RetinaFace's eyes and mouth moved to where RAF-DB's crops have them (eyes level).

A face the detector misses counts as wrong in "of all faces" and is left out of "of faces found". The same on photos
with the faces not turned, for reference.

    python -m benchmarks.face_alignment --ckpt runs/rafdb/checkpoints/last.ckpt --data-root ../shared/data/rafdb \\
        --json benchmarks/results/face-alignment.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.face_detection import composites
from nla import NLAModule
from nla.data import eval_transform, load_image, read_rafdb
from nla.faces import FaceDetector, aligned_crop


def accuracy(model: NLAModule, crops: list[np.ndarray], labels: list[int], transform) -> float:
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(crops), 64):
            batch = torch.stack([transform(image=c)["image"] for c in crops[start : start + 64]])
            correct += int((model(batch).argmax(1) == torch.as_tensor(labels[start : start + 64])).sum())
    return correct / max(len(crops), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="an nla checkpoint trained on RAF-DB")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--faces", type=int, default=1000, help="test faces pasted")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = NLAModule.load_from_checkpoint(args.ckpt, weights_only=True, map_location="cpu").eval()
    saved = torch.load(args.ckpt, weights_only=True, map_location="cpu")["datamodule_hyper_parameters"]
    size = int(saved["image_size"])
    transform = eval_transform(size, saved["mean"], saved["std"])
    test = read_rafdb(args.data_root, "test")
    label_of = dict(zip(test.paths, test.labels.tolist()))
    detector = FaceDetector("retinaface")
    results: dict = {"ckpt": args.ckpt, "image_size": size, "faces": args.faces}
    for name, angle in (("turned up to 30 degrees", 30.0), ("not turned", 0.0)):
        photos = composites(test.paths, args.faces, seed=11, max_angle=angle)
        labels = [label_of[path] for _, _, path in photos]
        original = accuracy(model, [load_image(path) for _, _, path in photos], labels, transform)
        boxed, aligned, found_labels = [], [], []
        for photo, _, path in photos:
            faces = detector.faces(photo)
            if faces:
                boxed.append(aligned_crop(photo, faces[0], size, detector.backend.alignment, template=None))
                aligned.append(detector.crop(photo, faces[0], size))
                found_labels.append(label_of[path])
        found = len(found_labels) / len(photos)
        entry = {"original crops": original, "found": found}
        for label, crops in (("detected, box crop", boxed), ("detected, aligned", aligned)):
            of_found = accuracy(model, crops, found_labels, transform)
            entry[label] = {"of faces found": of_found, "of all faces": of_found * found}
        results[name] = entry
        print(name, json.dumps(entry, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
