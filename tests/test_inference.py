"""Using a trained model: ``nla predict`` on a folder of images, and export to ONNX / TorchScript / torch.export."""

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from nla.cli import main, run_cli
from nla.data import eval_transform, load_image
from nla.data.synthetic import synthetic_image, write_image_folder
from nla.export import export, load_checkpoint
from nla.export import main as export_main
from tests.conftest import CONFIGS, TINY

CLASSES = ["angry", "happy", "sad"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained on a 3-class image folder, so its class names differ from any config's."""
    base = tmp_path_factory.mktemp("trained")
    root = write_image_folder(base / "data", classes=CLASSES, per_class=4, size=24)
    run_dir = base / "run"
    run_cli(["fit", "--config", str(CONFIGS / "rafdb.yaml"), "--data", "nla.data.ImageFolderDataModule",
             "--data.root", str(root), "--trainer.default_root_dir", str(run_dir), "--trainer.max_epochs", "1",
             "--trainer.logger", "false", "--model.backbone", "resnet10t", *TINY])
    return run_dir, run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture()
def mixed_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"
    (folder / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(folder / "one.jpg"), synthetic_image(0, 3, 40, rng))
    cv2.imwrite(str(folder / "a" / "two.png"), synthetic_image(1, 3, 30, rng, gray=True))  # grayscale
    cv2.imwrite(str(folder / "a" / "b" / "three.tiff"), synthetic_image(2, 3, 50, rng))
    (folder / "a" / "broken.jpg").write_bytes(b"not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_predict_writes_one_row_per_image_with_the_checkpoints_class_names(trained, mixed_folder, tmp_path):
    run_dir, ckpt = trained
    # The data of this config names other classes: the checkpoint's names must win.
    args = ["predict", "--config", str(run_dir / "config.yaml"), "--data.class_names", "[x, y, z]", "--ckpt_path", str(ckpt),
            "--data.predict_root", str(mixed_folder), "--trainer.logger", "false"]
    main(args)
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert [r["path"].split("faces/")[1] for r in rows] == ["a/b/three.tiff", "a/broken.jpg", "a/two.png", "one.jpg"]
    assert list(rows[0]) == ["path", "prediction", "prob_angry", "prob_happy", "prob_sad", "error"]
    good = [r for r in rows if not r["path"].endswith("broken.jpg")]
    for row in good:
        assert row["prediction"] in CLASSES and row["error"] == ""
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)
    broken = rows[1]
    assert broken["prediction"] == "" and "cannot decode" in broken["error"]
    # A second prediction never overwrites the first: it takes the next free name, or refuses a named file.
    first = (run_dir / "predictions.csv").read_bytes()
    main(args)
    assert (run_dir / "predictions-1.csv").is_file() and (run_dir / "predictions.csv").read_bytes() == first
    with pytest.raises(FileExistsError, match="is not overwritten"):
        run_cli([*args, "--trainer.callbacks.output", str(run_dir / "predictions.csv")])  # the writer is the last callback


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported_program"])
def test_exported_model_matches_the_checkpoint(trained, mixed_folder, tmp_path, fmt):
    _, ckpt = trained
    path = export(ckpt, tmp_path / f"model.{fmt}", fmt)
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["class_names"] == CLASSES and meta["image_size"] == 32 and len(meta["mean"]) == 3
    module, preprocessing = load_checkpoint(ckpt)
    size = meta["image_size"]
    files = [mixed_folder / "one.jpg", mixed_folder / "a" / "two.png", mixed_folder / "a" / "b" / "three.tiff"]
    images = [load_image(str(f)) for f in files]
    # The documented preprocessing: resize to S x S with bilinear, float32 0..255, N x 3 x S x S.
    batch = torch.stack([torch.from_numpy(cv2.resize(i, (size, size), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1).float()
                         for i in images])
    with torch.no_grad():
        expected = module(torch.stack([eval_transform(size, meta["mean"], meta["std"])(image=i)["image"] for i in images]))
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


def test_export_cli_refuses_to_overwrite(trained, tmp_path, capsys):
    _, ckpt = trained
    export_main(["--ckpt_path", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "m.pt")])
    assert "exported torchscript" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        export_main(["--ckpt_path", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "m.pt")])
    assert "is not overwritten" in capsys.readouterr().err
