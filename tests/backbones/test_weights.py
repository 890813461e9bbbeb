"""Loading pre-trained weights from files in the layouts FER papers share, written by the test itself."""

import pytest
import torch
import torchvision

from nla import NLAModule
from nla.backbones import UnsafeWeightsError, WeightsMismatchError, create_backbone, load_pretrained_weights


def msceleb_style_state_dict() -> dict[str, torch.Tensor]:
    """torchvision resnet18 names with a 1000-way fc, and no num_batches_tracked (older torchvision)."""
    model = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_msceleb_layout_loads_and_keeps_the_new_head(tmp_path):
    state = msceleb_style_state_dict()
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": state, "epoch": 1}, path)
    module = NLAModule(num_classes=7, pretrained_weights=str(path), channels_last=False)
    assert torch.equal(module.model.conv1.weight, state["conv1.weight"])
    assert torch.equal(module.model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert module.model.fc.weight.shape == (7, 512)  # the 1000-way head is dropped


def test_dataparallel_prefix_and_extra_embedding_are_handled(tmp_path):
    state = {f"module.{k}": v for k, v in msceleb_style_state_dict().items() if not k.startswith("fc.")}
    state["module.feature.weight"] = torch.randn(256, 512)  # IJB-A style embedding, dropped by default
    state["module.fc.weight"] = torch.randn(11, 256)
    path = tmp_path / "ijba_res18_naive.pth.tar"
    torch.save(state, path)  # a plain state dict, no 'state_dict' key
    model = create_backbone("resnet18", 7)
    loaded = load_pretrained_weights(model, path)
    assert "conv1.weight" in loaded and not any(k.startswith(("fc.", "feature.")) for k in loaded)
    assert torch.equal(model.conv1.weight, state["module.conv1.weight"])


def test_weights_that_do_not_fit_list_missing_and_unexpected_keys(tmp_path):
    state = msceleb_style_state_dict()
    state["layer5.0.conv1.weight"] = torch.randn(8, 8, 3, 3)  # a deeper network's block
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "deeper.pth")
    with pytest.raises(WeightsMismatchError) as error:
        load_pretrained_weights(create_backbone("resnet18", 7), tmp_path / "deeper.pth")
    message = str(error.value)
    assert "deeper.pth" in message and "1 unexpected [layer5.0.conv1.weight]" in message
    assert "1 missing [layer4.1.bn2.running_var]" in message
    bad_shape = msceleb_style_state_dict()
    bad_shape["conv1.weight"] = torch.randn(64, 1, 7, 7)
    torch.save(bad_shape, tmp_path / "gray.pth")
    with pytest.raises(WeightsMismatchError, match=r"mis-shaped \[conv1.weight: file \(64, 1, 7, 7\)"):
        load_pretrained_weights(create_backbone("resnet18", 7), tmp_path / "gray.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained_weights(create_backbone("resnet18", 7), tmp_path / "absent.pth")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="not a timm model"):
        create_backbone("resnet_does_not_exist", 7)


def test_an_nla_checkpoint_gives_its_backbone(trained_run, caplog):
    """A model trained by nla (here on 7 classes) starts another run, whatever that run's classes."""
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]
    with caplog.at_level("INFO"):
        module = NLAModule(
            backbone="test_resnet", num_classes=3, pretrained_weights=str(checkpoint), channels_last=False
        )
    tensors = sum(1 for key in trained if key.startswith("model.") and not key.startswith("model.fc."))
    assert f"pre-trained weights: {tensors} backbone tensors from {checkpoint}; the 3-class head (fc) starts fresh" in (
        caplog.text
    )
    loaded = module.model.state_dict()
    backbone = [key for key in loaded if not key.startswith("fc.")]
    assert backbone and all(torch.equal(loaded[key], trained[f"model.{key}"]) for key in backbone)
    assert module.model.fc.weight.shape[0] == 3  # a new head
    with pytest.raises(WeightsMismatchError, match="do not fit backbone"):
        NLAModule(backbone="resnet18", num_classes=3, pretrained_weights=str(checkpoint))


def test_a_checkpoint_loads_where_the_weights_it_started_from_are_gone(trained_run, tmp_path):
    """A run started from pre-trained weights: its checkpoint holds the backbone, so loading it elsewhere must not
    read the weights file again (it failed when that file was absent)."""
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["pretrained_weights"] = str(tmp_path / "gone" / "ms_celeb.pth")
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    module = NLAModule.load_from_checkpoint(moved, weights_only=True)
    assert module.class_names == checkpoint["class_names"]
    state = module.state_dict()
    assert all(torch.equal(state[key], value) for key, value in checkpoint["state_dict"].items())


class Pickled:
    """Not a tensor: unpickling it would run this class's code."""


def test_a_file_with_pickled_objects_is_refused_unless_trusted(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": msceleb_style_state_dict(), "extra": Pickled()}, path)
    with pytest.raises(
        UnsafeWeightsError, match=r"holds pickled Python objects .* --model.trust_pretrained_weights true"
    ):
        NLAModule(num_classes=7, pretrained_weights=str(path))
    module = NLAModule(num_classes=7, pretrained_weights=str(path), trust_pretrained_weights=True, channels_last=False)
    assert module.model.fc.weight.shape == (7, 512)


def test_a_file_that_is_not_a_weights_file_is_one_line(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsMismatchError, match=r"weights.pth' cannot be read as a PyTorch file"):
        load_pretrained_weights(create_backbone("resnet18", 7), path)
