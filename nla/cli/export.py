"""``nla export``: a trained checkpoint as ONNX, TorchScript or a ``torch.export`` program, with its preprocessing
(:data:`nla.preprocessing.EXPORT_CONTRACT`, shown by ``nla export --help``).

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
from nla.preprocessing import EXPORT_CONTRACT
from nla.settings import expand_home


def build_parser() -> ArgumentParser:
    description = "Write a trained checkpoint as ONNX, TorchScript or a torch.export program.\n\n" + EXPORT_CONTRACT
    parser = ArgumentParser(prog="nla export", description=description, exit_on_error=False)
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
    run(expand_home(build_parser().parse_args(list(argv[1:]))))
