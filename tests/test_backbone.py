"""Loading pre-trained weights from files in the layouts FER papers share, written by the test itself."""

import pytest
import torch
import torchvision

from nla import NLAModule
from nla.backbone import WeightsMismatchError, create_backbone, load_pretrained_weights


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
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(WeightsMismatchError) as error:
        load_pretrained_weights(create_backbone("resnet18", 7), path)
    message = str(error.value)
    assert "resnet34.pth" in message and "unexpected" in message and "layer1.2.conv1.weight" in message
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
