"""Checkpoint loading: every supported key layout, strictness and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from darkpose.models import CheckpointError, build_model, detect_layout, load_checkpoint, load_state
from darkpose.models.checkpoint import read_checkpoint, unwrap_state_dict
from tests.models.layouts import LAYOUTS, randomise, to_layout, write_checkpoint

EXPECTED_LAYOUT = {
    "official": "official",
    "official_dp": "official",
    "mmpose0": "mmpose0",
    "mmpose1": "mmpose1",
}


def _narrow_resnet() -> torch.nn.Module:
    return build_model("resnet50", base_width=8, deconv_channels=16)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ["hrnet_w8", "resnet50_narrow"])
def test_loads_each_layout_exactly(tmp_path: Path, layout: str, arch: str) -> None:
    make = _narrow_resnet if arch == "resnet50_narrow" else lambda: build_model(arch)
    src = randomise(make(), seed=1)
    path = write_checkpoint(src, tmp_path / f"{layout}.pth", layout)
    dst = make()
    assert load_checkpoint(dst, path) == EXPECTED_LAYOUT[layout]
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst.eval()(x))


def test_mmpose_keys_really_are_prefixed() -> None:
    state = build_model("hrnet_w8").state_dict()
    sd0 = to_layout(state, "mmpose0")["state_dict"]
    sd1 = to_layout(state, "mmpose1")["state_dict"]
    assert "keypoint_head.final_layer.weight" in sd0  # type: ignore[operator]
    assert "backbone.stage2.0.branches.0.0.conv1.weight" in sd0  # type: ignore[operator]
    assert "head.final_layer.bias" in sd1  # type: ignore[operator]
    assert "backbone.transition1.1.0.0.weight" in sd1  # type: ignore[operator]


def test_missing_num_batches_tracked_is_tolerated() -> None:
    src = randomise(build_model("hrnet_w8"), seed=2)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = build_model("hrnet_w8")
    assert load_state(dst, state) == "official"
    assert torch.equal(dst.final_layer.weight, src.final_layer.weight)


def _drop(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k != key}


def _add(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {**state, key: torch.zeros(3)}


def _reshape(state: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    return {**state, key: torch.zeros(5, 32, 1, 1)}


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [
        (_drop, "stage3.1.branches.2.0.bn1.weight", r"missing keys 1: stage3\.1\.branches\.2"),
        (_add, "stage5.0.weight", r"unexpected keys 1: stage5\.0\.weight"),
        (_reshape, "final_layer.weight", r"shape mismatches .*final_layer\.weight \(5, 32"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_mismatch_errors_list_the_keys(mutate: object, key: str, message: str) -> None:
    state = build_model("hrnet_w8").state_dict()
    with pytest.raises(CheckpointError, match=message):
        load_state(build_model("hrnet_w8"), mutate(state, key))  # type: ignore[operator]


def test_wrong_width_lists_shape_mismatches(tmp_path: Path) -> None:
    path = write_checkpoint(build_model("hrnet_w16"), tmp_path / "w16.pth", "mmpose1")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(build_model("hrnet_w8"), path)
    msg = str(info.value)
    assert "mmpose1 layout" in msg and "shape mismatches" in msg and "…" in msg


def test_hrnet_checkpoint_into_resnet_is_refused(tmp_path: Path) -> None:
    path = write_checkpoint(build_model("hrnet_w8"), tmp_path / "h.pth", "official")
    with pytest.raises(CheckpointError, match="missing keys .*unexpected keys"):
        load_checkpoint(_narrow_resnet(), path)


class NotATensor:  # pickled by reference: needs full unpickling
    pass


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2, 3], "expected a dict of tensors, got list"),
        ({"epoch": 3, "perf": 0.5}, "expected tensors"),
        ({"backbone.conv1.weight": torch.zeros(1)}, "expected an mmpose head"),
    ],
)
def test_bad_checkpoint_objects(obj: object, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_state(build_model("hrnet_w8"), obj)


def test_file_errors_and_unsafe_load(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="expected an existing file"):
        read_checkpoint(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a zip or pickle at all")
    with pytest.raises(CheckpointError, match="expected a"):
        read_checkpoint(garbage)
    model = build_model("hrnet_w8")
    obj = {**to_layout(model.state_dict(), "mmpose1"), "message_hub": NotATensor()}
    path = tmp_path / "meta.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="--unsafe-load"):
        load_checkpoint(build_model("hrnet_w8"), path)
    assert load_checkpoint(build_model("hrnet_w8"), path, unsafe=True) == "mmpose1"


def test_unwrap_prefers_state_dict_and_strips_module() -> None:
    t = torch.ones(2)
    sd = unwrap_state_dict({"state_dict": {"module.a": t}, "model": {"b": t}})
    assert list(sd) == ["a"]
    assert detect_layout({"backbone.x": t, "head.final_layer.weight": t}) == "mmpose1"
    assert detect_layout({"conv1.weight": t}) == "official"
