"""``nla export``: ONNX (one self-contained file), TorchScript and torch.export programs that give the checkpoint's
logits from 0..255 images resized as the JSON beside them says."""

import json
from unittest.mock import patch

import cv2
import numpy as np
import pytest
import torch

from nla.cli import main
from nla.data import eval_transform, load_image
from nla.export import FORMATS, export, load_checkpoint
from tests.conftest import NO_LOGGER, TINY
from tests.fakes import synthetic_image, write_image_folder

CLASSES = ["angry", "happy", "sad"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained on a 3-class image folder, normalised with that folder's own statistics."""
    base = tmp_path_factory.mktemp("trained")
    root = write_image_folder(base / "data", classes=CLASSES, per_class=4, size=24)
    run_dir = base / "run"
    with patch("sys.argv", ["nla"]):
        main(
            [
                "fit",
                "--data",
                "nla.data.ImageFolderDataModule",
                "--data.root",
                str(root),
                "--trainer.default_root_dir",
                str(run_dir),
                "--trainer.max_epochs",
                "1",
                *TINY,
                *NO_LOGGER,
            ]
        )
    return run_dir, run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"
    (folder / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(folder / "one.jpg"), synthetic_image(0, 3, 40, rng))
    cv2.imwrite(str(folder / "a" / "two.png"), synthetic_image(1, 3, 30, rng, gray=True))  # grayscale
    cv2.imwrite(str(folder / "a" / "b" / "three.tiff"), synthetic_image(2, 3, 50, rng))
    return [folder / "one.jpg", folder / "a" / "two.png", folder / "a" / "b" / "three.tiff"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param("onnx", marks=pytest.mark.slow),
        "torchscript",
        pytest.param("exported_program", marks=pytest.mark.slow),
    ],
)
def test_exported_model_matches_the_checkpoint(trained, images, tmp_path, fmt):
    _, ckpt = trained
    path = export(ckpt, (tmp_path / "model").with_suffix(FORMATS[fmt]), fmt)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["class_names"] == CLASSES and meta["image_size"] == 32 and len(meta["mean"]) == 3
    assert meta["resize"]["antialias"] is False and "INTER_LINEAR" in meta["resize"]["opencv"]
    if fmt == "onnx":
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("model.onnx")] == sorted(
            ["model.onnx", "model.onnx.json"]
        )
    module, _ = load_checkpoint(ckpt)
    size = meta["image_size"]
    decoded = [load_image(str(f)) for f in images]
    # The documented preprocessing: OpenCV bilinear resize to S x S, float32 0..255, N x 3 x S x S.
    batch = torch.stack(
        [
            torch.from_numpy(cv2.resize(i, (size, size), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1).float()
            for i in decoded
        ]
    )
    with torch.no_grad():
        expected = module(
            torch.stack([eval_transform(size, meta["mean"], meta["std"])(image=i)["image"] for i in decoded])
        )
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path))
        got = torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
    elif fmt == "torchscript":
        got = torch.jit.load(str(path))(batch)
    else:
        got = torch.export.load(str(path)).module()(batch)
    assert got.shape == (3, 3)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_export_through_the_cli_refuses_to_overwrite_and_bad_files(trained, tmp_path, capsys):
    _, ckpt = trained
    main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "m.pt")])
    assert "exported torchscript" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "m.pt")])
    assert "is not overwritten" in capsys.readouterr().err
    for wrong, message in (
        (["--image_size", "0"], "--image_size 0 is too small"),  # was the training size, silently
        (["--format", "torchscript", "--output", str(tmp_path / "t.onnx")], "t.onnx is named as onnx but the format"),
        (
            ["--output", str(tmp_path / "m.txt")],
            f"--output {tmp_path / 'm.txt'}: onnx files end in .onnx; name it m.onnx",
        ),
        (["--output", str(tmp_path)], f"--output {tmp_path} is a folder; give the file to write"),  # "exists"
        (["--output", str(tmp_path / "m.pt" / "x.onnx")], f"{tmp_path / 'm.pt'} is a file"),  # after the export
    ):
        with pytest.raises(SystemExit):
            main(["export", "--ckpt_path", str(ckpt), *wrong])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "t.onnx").exists() and not ckpt.with_suffix(".onnx").exists()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(ckpt.read_bytes()[:5000])  # a checkpoint cut short
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(broken), "--output", str(tmp_path / "b.onnx")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.ckpt' cannot be read" in err and "Traceback" not in err
