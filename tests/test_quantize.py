"""``darkpose quantize`` and its parts: real calibration crops, parity figures, the int8 card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.cli import main
from darkpose.service.core.cards import CARD_METADATA_KEY, ModelCard, parse_card
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.types import ModelSpec
from darkpose.service.evaluation import gt_boxes, load_coco
from darkpose.service.quantize import (
    annotated_image_ids,
    calibration_crops,
    float_nodes,
    int8_card,
    measure_parity,
    name_nodes,
    split_images,
    write_card,
)
from darkpose.service.runtime.cards import card_from_metadata, resolve_card
from tests.conftest import IMAGES, KPT_ANN
from tests.runtime.onnx_fixtures import small_pose_model


@pytest.fixture(scope="module")
def coco():  # type: ignore[no-untyped-def]
    return load_coco(KPT_ANN)


def test_calibration_crops_are_the_services_crops_of_gt_boxes(coco) -> None:  # type: ignore[no-untyped-def]
    ids = annotated_image_ids(coco)[:3]
    spec = ModelSpec()
    x = calibration_crops(spec, IMAGES, coco, ids)
    assert x.shape == (sum(len(gt_boxes(coco, i)[0]) for i in ids), 3, 256, 192)
    assert x.dtype == np.float32
    # normalised real pixels: ImageNet-normalised range, not constant, not random noise
    assert float(x.min()) > -2.2 and float(x.max()) < 2.7
    assert float(x.std()) > 0.3
    # neighbouring pixels of a photo are correlated (random tensors are not)
    a, b = x[:, :, :, :-1].ravel(), x[:, :, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.8


def test_annotated_ids_have_boxes_and_split_is_deterministic(coco) -> None:  # type: ignore[no-untyped-def]
    ids = annotated_image_ids(coco)
    assert ids == sorted(ids) and all(len(gt_boxes(coco, i)[0]) for i in ids)
    calib, held = split_images(ids, 0.5)
    assert calib + held == ids and len(calib) == -(-len(ids) // 2)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_split_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(InvalidParameter, match=r"calib_fraction: expected in \(0, 1\]"):
        split_images([1, 2, 3], fraction)


@settings(max_examples=25, deadline=None)
@given(y=st.integers(8, 56), x=st.integers(8, 40), dy=st.integers(-3, 3), dx=st.integers(-3, 3))
def test_parity_of_a_moved_peak(y: int, x: int, dy: int, dx: int) -> None:
    """A Gaussian peak moved by (dx, dy) pixels: keypoint max |Δ| = the move; identical
    heatmaps: zero error, full agreement."""
    yy, xx = np.mgrid[0:64, 0:48]

    def peak(cy: int, cx: int) -> np.ndarray:
        return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0).astype(np.float32)[None, None]

    ref = peak(y, x)
    same = measure_parity(ref, ref.copy())
    assert same.heatmap_max_abs == 0.0 and same.keypoint_max_abs == 0.0
    assert same.argmax_agreement == 1.0
    moved = measure_parity(ref, peak(y + dy, x + dx))
    assert moved.keypoint_max_abs == pytest.approx(np.hypot(dx, dy), abs=0.05)
    assert moved.argmax_agreement == (1.0 if dx == dy == 0 else 0.0)


def test_parity_shape_mismatch() -> None:
    with pytest.raises(InvalidParameter, match="expected two"):
        measure_parity(np.zeros((1, 17, 64, 48), np.float32), np.zeros((2, 17, 64, 48), np.float32))


def test_keep_float_words(tmp_path: Path) -> None:
    model = name_nodes(onnx.load(str(small_pose_model(tmp_path / "m.onnx"))))
    assert all(n.name for n in model.graph.node)
    names, types = float_nodes(model, ["depthwise", "Relu"])
    assert len(names) == 1 and types == ["Relu"]
    with pytest.raises(InvalidParameter, match="expected depthwise or op types"):
        float_nodes(model, ["Softmax"])


def test_int8_card_round_trip(tmp_path: Path) -> None:
    model = onnx.load(str(small_pose_model(tmp_path / "m.onnx")))
    model.metadata_props.add(key="darkpose.blur_kernel", value="9")  # stale keys are dropped
    card = int8_card(
        ModelCard.from_spec(ModelSpec(name="m", blur_kernel=7)),
        "m.int8.onnx",
        {"tool": "nncf x", "parity": {"held_out": {"heatmap_max_abs": 0.1}}},
    )
    write_card(model, card)
    meta = {p.key: p.value for p in model.metadata_props}
    assert list(meta) == [CARD_METADATA_KEY]
    back = card_from_metadata(meta, "m")
    assert back is not None and back == card
    assert back.precision == "int8" and back.float_precision == "fp32"
    assert back.quantization is not None
    assert back.quantization.parity["held_out"]["heatmap_max_abs"] == 0.1
    assert back.to_spec().blur_kernel == 7 and back.file == "m.int8.onnx"


@pytest.mark.slow
def test_quantize_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("nncf", reason="needs the optional `openvino` extra (nncf)")
    src = small_pose_model(tmp_path / "small.onnx")
    out = tmp_path / "small.int8.onnx"
    argv = ["quantize", "--model", str(src), "--out", str(out), "--calib-fraction", "0.1"]
    argv += ["--images", str(IMAGES), "--ann", str(KPT_ANN)]
    assert main([*argv, "--backend", "onnxruntime"]) == 0
    printed = parse_card(capsys.readouterr().out, "stdout")
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the depthwise conv (kept float by default) reads a float tensor, not a dequantised one
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    (dw,) = [n for n in model.graph.node if any(a.name == "group" for a in n.attribute)]
    assert dw.input[0] not in dq_outputs
    found = resolve_card(out, kind="pose")
    assert found is not None and found.source == "metadata" and found.card == printed
    card = found.card
    assert card.precision == "int8" and card.quantization is not None
    from darkpose.service.api.state import _runtime_of
    from darkpose.service.runtime.pose import OnnxPoseModel

    served = OnnxPoseModel(out, providers="cpu", intra_op_threads=1)
    assert _runtime_of(served) == {"backend": "onnxruntime", "precision": "int8"}
    q = card.quantization
    assert q.source_model == "small.onnx" and q.keep_float == ("depthwise",)
    assert q.calibration["boxes"] == "gt" and q.calibration["crops"] > 0
    for part in ("calibration", "held_out"):
        p = q.parity[part]
        assert p["crops"] > 0 and p["heatmap_max_abs"] > 0.0
        assert 0.0 <= p["ap_int8"] <= 1.0 and 0.0 <= p["ap_fp32"] <= 1.0


def test_quantize_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = small_pose_model(tmp_path / "small.onnx")
    argv = ["quantize", "--model", str(src), "--out", str(src)]
    assert main([*argv, "--images", str(IMAGES), "--ann", str(KPT_ANN)]) == 2


@pytest.mark.slow
def test_opset8_model_is_converted_then_quantised(coco) -> None:  # type: ignore[no-untyped-def]
    """NNCF refuses opset < 10: the shared SimpleBaseline (opset 8, spatial=0 BatchNorms) is
    converted to opset 13 first and quantises."""
    pytest.importorskip("nncf", reason="needs the optional `openvino` extra (nncf)")
    from darkpose.service.quantize import MIN_OPSET, quantize_onnx
    from tests.conftest import POSE_ONNX

    crops = calibration_crops(ModelSpec(), IMAGES, coco, annotated_image_ids(coco)[:2])
    model, record = quantize_onnx(POSE_ONNX.read_bytes(), crops)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= MIN_OPSET and record["quantized_nodes"] > 0
    assert "QuantizeLinear" in {n.op_type for n in model.graph.node}
