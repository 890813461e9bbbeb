"""``nla export``: a trained checkpoint as ONNX, TorchScript or a ``torch.export`` program, with its preprocessing.

The exported graph takes **float32 RGB images, N x 3 x S x S, with values 0..255**, already resized to
S x S (bilinear), and returns **logits** (softmax gives probabilities). Normalisation with the training
mean and std is inside the graph. A JSON file beside the model records S, the mean and std, the class
names and this contract.

    nla export --ckpt_path runs/rafdb-nla/checkpoints/last.ckpt --format onnx --output model.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from nla.data.batch_augment import normalisation
from nla.data.transforms import RAFDB_MEAN, RAFDB_STD
from nla.module import NLAModule

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}


class ExportedClassifier(nn.Module):
    """Normalisation plus backbone: 0..255 RGB images in, logits out."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        scale, shift = normalisation(mean, std)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images * self.scale + self.shift)


def load_checkpoint(ckpt_path: str | Path) -> tuple[NLAModule, dict[str, Any]]:
    """The trained module, in eval mode on the CPU, and its preprocessing (image size, mean, std, class names)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt_path)!r} does not exist")
    # The backbone's weights come from the checkpoint, so the original pre-trained file is not needed.
    module = NLAModule.load_from_checkpoint(ckpt_path, map_location="cpu", pretrained_weights=None, compile=False,
                                            channels_last=False)
    module.eval()
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    data = checkpoint.get("datamodule_hyper_parameters", {})
    preprocessing = {
        "image_size": int(data.get("image_size", 224)),
        "mean": list(data.get("mean", RAFDB_MEAN)),
        "std": list(data.get("std", RAFDB_STD)),
        "class_names": list(module.class_names),
    }
    return module, preprocessing


def export(ckpt_path: str | Path, output: str | Path, fmt: str = "onnx", image_size: Optional[int] = None) -> Path:
    """Write the model to ``output`` and its preprocessing to ``output`` + ``.json``; returns the model's path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    output = Path(output)
    sidecar = output.with_name(output.name + ".json")
    for path in (output, sidecar):
        if path.exists():
            raise FileExistsError(f"{path} exists and is not overwritten; choose another --output")
    module, preprocessing = load_checkpoint(ckpt_path)
    size = image_size or preprocessing["image_size"]
    model = ExportedClassifier(module.model, preprocessing["mean"], preprocessing["std"]).eval()
    example = torch.rand(2, 3, size, size) * 255
    output.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(model, (example,), str(output), dynamo=True, input_names=["images"],
                              output_names=["logits"], dynamic_shapes=({0: batch},))
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in recent torch; it still works
                torch.jit.trace(model, example).save(str(output))
        else:
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(output))
    sidecar.write_text(json.dumps({
        "format": fmt,
        "checkpoint": str(ckpt_path),
        "input": f"float32 RGB images, N x 3 x {size} x {size}, values 0..255, resized to {size} x {size} with bilinear interpolation",
        "normalisation": "inside the graph: (x / 255 - mean) / std",
        "output": "logits, N x num_classes; softmax gives probabilities",
        **{**preprocessing, "image_size": size},
    }, indent=2))
    return output


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="nla export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by nla fit")
    parser.add_argument("--format", default="onnx", choices=list(FORMATS))
    parser.add_argument("--output", help="the file to write (default: beside the checkpoint)")
    parser.add_argument("--image-size", type=int, help="input side S (default: the training image size)")
    args = parser.parse_args(argv)
    output = args.output or str(Path(args.ckpt_path).with_suffix(FORMATS[args.format]))
    try:
        path = export(args.ckpt_path, output, args.format, args.image_size)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"nla export: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"exported {args.format} to {path} (preprocessing in {path.name}.json)")
