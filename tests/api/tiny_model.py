"""A tiny real ONNX pose-like model (built with onnx.helper, run by onnxruntime) for tests
that must not depend on the shared models' speed."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from darkpose.service.core.types import F32, ModelSpec

TINY_IN = (6, 8)  # (W, H)
TINY_K = 4


def tiny_onnx_bytes(seed: int = 0) -> bytes:
    """(N, 3, 8, 6) → Conv 3×3 pad 1 → (N, 4, 8, 6); batch dimension symbolic."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(TINY_K, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=(TINY_K,)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, TINY_IN[1], TINY_IN[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", TINY_K, TINY_IN[1], TINY_IN[0]])
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [conv], "tiny", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class TinyOnnxPoseModel:
    """Implements ``PoseModel`` on the tiny ONNX graph; records the batch size of each call.

    ``gate``: when given, every ``infer`` waits for it (to hold the batcher thread busy).
    """

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            tiny_onnx_bytes(), so, providers=["CPUExecutionProvider"]
        )
        self.spec = ModelSpec(
            name="tiny",
            input_size=TINY_IN,
            heatmap_size=TINY_IN,
            keypoint_names=tuple(f"k{i}" for i in range(TINY_K)),
            flip_pairs=(),
        )
        self.gate = gate
        self.fail = fail
        self.call_sizes: list[int] = []
        self.entered = threading.Event()
        self.active = 0  # calls inside infer now
        self.max_active = 0
        self._lock = threading.Lock()

    def infer(self, batch: F32) -> F32:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            if self.gate is not None:
                self.gate.wait(10.0)
            self.call_sizes.append(int(batch.shape[0]))
            if self.fail:
                raise RuntimeError("tiny model failure on purpose")
            if batch.shape[0] == 0:
                return np.zeros((0, TINY_K, TINY_IN[1], TINY_IN[0]), np.float32)
            return np.asarray(self.session.run(["y"], {"x": batch})[0], np.float32)
        finally:
            with self._lock:
                self.active -= 1


def random_crops(n: int, seed: int = 0) -> F32:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3, TINY_IN[1], TINY_IN[0])).astype(np.float32)
