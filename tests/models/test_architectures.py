"""HRNet / SimpleBaseline definitions: published configurations, official names, shapes."""

from __future__ import annotations

import pytest
import torch

from darkpose.models import ExportError, build_model, parse_input_size
from darkpose.models.hrnet import PoseHighResolutionNet
from darkpose.models.resnet import PoseResNet

# parameter counts of the published COCO 256x192 models (HRNet paper Table 1, SimpleBaseline)
PUBLISHED_PARAMS = {
    "hrnet_w32": 28.5e6,
    "hrnet_w48": 63.6e6,
    "resnet50": 34.0e6,
    "resnet101": 53.0e6,
    "resnet152": 68.6e6,
}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS))
def test_published_configs_have_the_published_size(arch: str) -> None:
    model = build_model(arch)
    assert n_params(model) == pytest.approx(PUBLISHED_PARAMS[arch], rel=0.01)
    assert not model.training


def test_hrnet_w32_official_key_names() -> None:
    keys = set(build_model("hrnet_w32").state_dict())
    expected = {
        "conv1.weight",
        "bn2.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.3.bn3.weight",
        "transition1.0.0.weight",
        "transition1.1.0.0.weight",
        "transition2.2.0.0.weight",
        "transition3.3.0.1.running_mean",
        "stage2.0.branches.1.3.conv2.weight",
        "stage2.0.fuse_layers.0.1.0.weight",
        "stage2.0.fuse_layers.1.0.0.0.weight",
        "stage3.3.fuse_layers.2.0.1.0.weight",
        "stage4.2.fuse_layers.0.3.1.weight",
        "final_layer.weight",
        "final_layer.bias",
    }
    assert expected <= keys
    # the last stage-4 module only fuses into the highest resolution (multi_scale_output=False)
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in keys)
    assert any(k.startswith("stage4.1.fuse_layers.3.") for k in keys)
    assert not any(k.startswith(("transition2.0", "transition2.1", "transition3.0")) for k in keys)


def test_resnet_official_key_names() -> None:
    keys = set(build_model("resnet50").state_dict())
    assert {
        "conv1.weight",
        "bn1.weight",
        "layer4.2.conv3.weight",
        "layer2.0.downsample.1.running_var",
        "deconv_layers.0.weight",
        "deconv_layers.7.running_mean",
        "final_layer.weight",
    } <= keys
    assert not any(k.startswith("deconv_layers.0.bias") for k in keys)


@pytest.mark.parametrize(
    ("model", "size"),
    [
        (PoseHighResolutionNet(width=32), (64, 96)),
        (PoseHighResolutionNet(width=8, num_joints=5), (128, 96)),
        (PoseResNet(depth=50, base_width=8, deconv_channels=16), (64, 32)),
    ],
    ids=["hrnet_w32", "hrnet_w8_k5", "resnet50_narrow"],
)
def test_forward_shapes(model: torch.nn.Module, size: tuple[int, int]) -> None:
    h, w = size
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, h, w))
    assert out.shape == (2, model.num_joints, h // 4, w // 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256x192", (192, 256)), ("384X288", (288, 384)), (" 64 x 32 ", (32, 64))],
)
def test_parse_input_size(text: str, expected: tuple[int, int]) -> None:
    assert parse_input_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("256*192", "expected HEIGHTxWIDTH"),
        ("256x", "expected HEIGHTxWIDTH"),
        ("wide", "expected HEIGHTxWIDTH"),
        ("250x192", "multiples of 32"),
        ("256x200", "multiples of 32"),
        ("0x192", "multiples of 32"),
    ],
)
def test_parse_input_size_errors(text: str, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        parse_input_size(text)


@pytest.mark.parametrize("arch", ["hrnet", "hrnet_w0", "resnet18", "vit_b", ""])
def test_unknown_arch(arch: str) -> None:
    with pytest.raises(ExportError, match="architecture: expected one of"):
        build_model(arch)
