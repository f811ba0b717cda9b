"""OnnxPoseModel on the real shared pose model (batched, spec from metadata/shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.types import ModelSpec, PoseModel
from darkpose.service.runtime.pose import OnnxPoseModel
from tests.conftest import POSE_ONNX
from tests.runtime.onnx_fixtures import tiny_pose_model, with_metadata


@pytest.fixture(scope="module")
def pose() -> OnnxPoseModel:
    return OnnxPoseModel(POSE_ONNX, providers="cpu", intra_op_threads=1)


def test_defaults_are_the_shared_model(pose: OnnxPoseModel) -> None:
    assert isinstance(pose, PoseModel)
    spec = pose.spec
    assert spec.input_size == (192, 256)
    assert spec.heatmap_size == (48, 64)
    assert spec.channel_order == "RGB"
    assert spec.mean == ModelSpec().mean and spec.std == ModelSpec().std
    assert spec.name == "pose_simplepose_256x192"
    assert not spec.decoded_output


def test_batched_equals_one_by_one(pose: OnnxPoseModel) -> None:
    x = np.random.default_rng(1).normal(size=(4, 3, 256, 192)).astype(np.float32)
    batched = pose.infer(x)
    single = np.concatenate([pose.infer(x[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 17, 64, 48) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    # different inputs give different heatmaps (the batch is not broadcast from crop 0)
    assert not np.allclose(batched[0], batched[1])


def test_max_batch_chunks_give_the_same_result(pose: OnnxPoseModel) -> None:
    chunked = OnnxPoseModel(POSE_ONNX, providers="cpu", intra_op_threads=1, max_batch=2)
    x = np.random.default_rng(2).normal(size=(5, 3, 256, 192)).astype(np.float32)
    np.testing.assert_allclose(chunked.infer(x), pose.infer(x), rtol=1e-4, atol=1e-5)


def test_empty_batch(pose: OnnxPoseModel) -> None:
    out = pose.infer(np.zeros((0, 3, 256, 192), np.float32))
    assert out.shape == (0, 17, 64, 48)


@pytest.mark.parametrize(
    "shape", [(2, 3, 128, 96), (2, 256, 192), (2, 1, 256, 192), (2, 3, 192, 256)]
)
def test_wrong_batch_shape(pose: OnnxPoseModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidParameter, match=r"expected shape \(N, 3, 256, 192\)"):
        pose.infer(np.zeros(shape, np.float32))


def test_spec_from_metadata(tmp_path: Path) -> None:
    meta = ModelSpec(name="meta-model", channel_order="BGR", mean=(0.5, 0.5, 0.5)).to_metadata()
    model = OnnxPoseModel(with_metadata(tmp_path / "m.onnx", meta), providers="cpu")
    assert model.spec.name == "meta-model"
    assert model.spec.channel_order == "BGR"
    assert model.spec.mean == (0.5, 0.5, 0.5)


def test_decoded_output_flag_from_metadata(tmp_path: Path) -> None:
    path = with_metadata(tmp_path / "m.onnx", {"darkpose.decoded_output": "1"})
    model = OnnxPoseModel(path, providers="cpu")
    assert model.spec.decoded_output
    assert model.infer(np.zeros((0, 3, 256, 192), np.float32)).shape == (0, 17, 3)


def test_sizes_read_from_onnx_shapes_without_metadata(tmp_path: Path) -> None:
    model = OnnxPoseModel(tiny_pose_model(tmp_path / "tiny.onnx", k=5), providers="cpu")
    assert model.spec.input_size == (32, 64)
    assert model.spec.heatmap_size == (8, 16)
    out = model.infer(np.ones((3, 3, 64, 32), np.float32))
    assert out.shape == (3, 5, 16, 8)


def test_bad_metadata_is_a_model_error(tmp_path: Path) -> None:
    path = with_metadata(tmp_path / "m.onnx", {"darkpose.input_size": json.dumps([1, 2, 3])})
    with pytest.raises(ModelError, match="darkpose.input_size"):
        OnnxPoseModel(path, providers="cpu")


def test_missing_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expected a readable ONNX file"):
        OnnxPoseModel(tmp_path / "missing.onnx", providers="cpu")
