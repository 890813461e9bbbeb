"""``nla export``: a trained checkpoint as ONNX, TorchScript or a ``torch.export`` program, with its preprocessing
(the contract is :data:`nla.preprocessing.EXPORT_CONTRACT`).

    nla export --ckpt_path runs/rafdb/checkpoints/last.ckpt --format onnx --output model.onnx
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from nla.backbones import WeightsMismatchError, load_trusted
from nla.backbones.starts import restoring
from nla.data.batch_augment import normalisation
from nla.data.upgrade import upgrade_settings
from nla.errors import UserError, check_image_size
from nla.module import NLAModule
from nla.preprocessing import RESIZE, Preprocessing

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
Format = Literal["onnx", "torchscript", "exported_program"]


class ExportedClassifier(nn.Module):
    """Normalisation plus backbone: 0..255 RGB images in, logits out."""

    scale: Tensor
    shift: Tensor

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        scale, shift = normalisation(mean, std)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images * self.scale + self.shift)


def load_checkpoint(ckpt_path: str | Path) -> tuple[NLAModule, dict[str, Any]]:
    """The trained module, in eval mode on the CPU, and its preprocessing (image size, mean, std, class names).

    The file is read once, without unpickling arbitrary objects.
    """
    checkpoint = load_trusted(ckpt_path, what="checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsMismatchError(f"{ckpt_path} is not a checkpoint written by nla fit (it has no 'state_dict')")
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    # The backbone's weights come from the checkpoint, so the original pre-trained file is not needed.
    with restoring():
        module = NLAModule(**{**hparams, "compile": False, "channels_last": False})
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    settings = upgrade_settings(dict(checkpoint.get("datamodule_hyper_parameters") or {}))
    recorded = Preprocessing(**(settings.get("preprocessing") or {}))
    if not recorded.normalised or recorded.image_size is None:
        raise WeightsMismatchError(
            f"{ckpt_path} does not record the input size and normalisation its model was trained with"
        )
    return module, {**recorded.to_dict(), "class_names": list(module.class_names)}


def export(ckpt_path: str | Path, output: str | Path, fmt: str = "onnx", image_size: Optional[int] = None) -> Path:
    """Write the model to ``output`` and its preprocessing to ``output`` + ``.json``; returns the model's path."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    if image_size is not None:
        check_image_size(image_size, "--image_size")
    output = Path(output)
    named = next((other for other, suffix in FORMATS.items() if output.suffix == suffix), None)
    if named not in (fmt, None):
        raise UserError(
            f"{output} is named as {named} but the format is {fmt}; name it {FORMATS[fmt]} or pass --format {named}"
        )
    if named is None and not output.is_dir():  # m.txt: a reader would not know what it holds
        raise UserError(f"--output {output}: {fmt} files end in {FORMATS[fmt]}; name it {output.stem}{FORMATS[fmt]}")
    if output.is_dir():
        raise UserError(
            f"--output {output} is a folder; give the file to write, e.g. {output / ('model' + FORMATS[fmt])}"
        )
    sidecar = output.with_name(output.name + ".json")
    for path in (output, sidecar):
        if path.exists():
            raise FileExistsError(f"{path} exists and is not overwritten; choose another --output")
    existing = next((folder for folder in output.parents if folder.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):  # before the export, not after it
        raise UserError(f"--output {output}: {existing} is {'a file' if not existing.is_dir() else 'not writable'}")
    module, preprocessing = load_checkpoint(ckpt_path)
    size = image_size if image_size is not None else preprocessing["image_size"]
    smallest = module.input_spec().min_size
    if size < smallest:
        raise UserError(
            f"--image_size {size} is smaller than {module.hparams['backbone']} takes: give {smallest} or more"
        )
    model = ExportedClassifier(module.model, preprocessing["mean"], preprocessing["std"]).eval()
    example = torch.rand(2, 3, size, size) * 255
    output.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        if fmt == "onnx":
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
            )
            assert program is not None
            program.save(str(output), external_data=False)  # one file: the weights inside, no .onnx.data beside it
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", FutureWarning
                )  # TorchScript is deprecated in recent torch; it still works
                torch.jit.trace(model, example).save(str(output))
        else:
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(output))
    sidecar.write_text(
        json.dumps(
            {
                "format": fmt,
                "checkpoint": str(Path(ckpt_path).resolve()),
                "input": f"float32 RGB images, N x 3 x {size} x {size}, values 0..255, resized to {size} x {size} "
                "as 'resize' says",
                "resize": {**RESIZE, "size": [size, size]},
                "normalisation": "inside the graph: (x / 255 - mean) / std",
                "output": "logits, N x num_classes; softmax gives probabilities",
                **{**preprocessing, "image_size": size},
            },
            indent=2,
        )
    )
    return output
