"""``nla export``: a trained checkpoint as ONNX, TorchScript or a ``torch.export`` program, with its preprocessing.

The exported graph takes **float32 RGB images, N x 3 x S x S, with values 0..255**, already resized to
S x S, and returns **logits** (softmax gives probabilities). Normalisation with the training mean and std
is inside the graph. The resize must be the one training used: bilinear with half-pixel centres and no
antialiasing, as OpenCV's ``cv2.resize(image, (S, S), interpolation=cv2.INTER_LINEAR)`` does (PIL's
bilinear antialiases when shrinking and gives other pixels). A JSON file beside the model records S, the
resize, the mean and std, the class names and this contract. An ONNX export is one self-contained file.

    nla export --ckpt_path runs/rafdb/checkpoints/last.ckpt --format onnx --output model.onnx
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentParser, Namespace

from nla.errors import UserError
from nla.export import FORMATS, Format, export


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nla export", description=__doc__, exit_on_error=False)
    parser.add_argument("--ckpt_path", type=str, required=True, help="a checkpoint written by nla fit")
    parser.add_argument("--format", type=Format, default="onnx", help="onnx, torchscript or exported_program")
    parser.add_argument(
        "--output", type=Optional[str], default=None, help="the file to write (default: beside the checkpoint)"
    )
    parser.add_argument(
        "--image_size", type=Optional[int], default=None, help="input side S (default: the training image size)"
    )
    return parser


def run(config: Namespace) -> None:
    output = config.output or str(Path(config.ckpt_path).with_suffix(FORMATS[config.format]))
    try:
        path = export(config.ckpt_path, output, config.format, config.image_size)
    except (UserError, FileExistsError, FileNotFoundError) as error:
        print(f"nla export: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"exported {config.format} to {path} (preprocessing in {path.name}.json)")


def main(argv: Sequence[str]) -> None:
    run(build_parser().parse_args(list(argv[1:])))
