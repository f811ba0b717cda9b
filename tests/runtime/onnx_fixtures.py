"""Helpers that write small variants of the shared ONNX models to a temporary directory, and a
counting pose-model wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from darkpose.service.core.types import F32, PoseModel
from tests.conftest import POSE_ONNX


class CountingPose:
    """Delegates to a real pose model and records the batch size of every call."""

    def __init__(self, inner: PoseModel) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls: list[int] = []

    def infer(self, batch: F32) -> F32:
        self.calls.append(int(batch.shape[0]))
        return self.inner.infer(batch)


def with_metadata(dst: Path, meta: dict[str, str], src: Path = POSE_ONNX) -> Path:
    """Copy of ``src`` with ``metadata_props`` set to ``meta``."""
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dst))
    return dst


def perturbed(dst: Path, scale: float = 1.1, src: Path = POSE_ONNX) -> Path:
    """Copy of ``src`` whose last conv weight (the heatmap head) is multiplied by ``scale``."""
    model = onnx.load(str(src))
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    target = conv_weights[-1]
    for i, init in enumerate(model.graph.initializer):
        if init.name == target:
            arr = numpy_helper.to_array(init) * np.float32(scale)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, target))
    onnx.save(model, str(dst))
    return dst


def tiny_pose_model(dst: Path, k: int = 5, size: tuple[int, int] = (32, 64)) -> Path:
    """A synthetic pose 'network': one 4×4/stride-4 conv, input (1, 3, H, W) fixed batch, output
    (1, k, H/4, W/4); no metadata (sizes must come from the shapes)."""
    w, h = size
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(k, 3, 4, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[4, 4], strides=[4, 4])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k, h // 4, w // 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(dst))
    return dst


def small_pose_model(dst: Path, k: int = 17, size: tuple[int, int] = (192, 256)) -> Path:
    """A small synthetic pose network with the layer kinds of a real one: a 4×4/stride-4 conv,
    ReLU, a depthwise 3×3 conv (group = channels), ReLU, a 1×1 conv to ``k`` heatmaps.  Input
    ``image`` (N, 3, H, W) with a symbolic batch, output ``heatmaps`` (N, k, H/4, W/4)."""
    w, h = size
    c = 8
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (c, 3, 4, 4)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (c, 1, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (k, c, 1, 1)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["a"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["d"], kernel_shape=[3, 3], pads=[1] * 4, group=c),
        helper.make_node("Relu", ["d"], ["e"]),
        helper.make_node("Conv", ["e", "w3"], ["heatmaps"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, h, w])],
        [
            helper.make_tensor_value_info(
                "heatmaps", TensorProto.FLOAT, ["batch", k, h // 4, w // 4]
            )
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(dst))
    return dst
