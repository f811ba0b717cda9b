"""onnxruntime session factory and the batch-dimension rewrite, on the real shared models."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import darkpose.service.runtime.onnx as onnx_mod
from darkpose.service.core.errors import ModelError
from darkpose.service.runtime.onnx import (
    BATCH_DIM,
    CPU,
    CUDA,
    create_session,
    graph_inputs,
    make_batch_dynamic,
    resolve_providers,
    static_shape,
)
from tests.conftest import POSE_ONNX, YOLOX_ONNX

HAS_CUDA = CUDA in ort.get_available_providers()


def test_resolve_providers_cpu_and_auto() -> None:
    assert resolve_providers("cpu") == [CPU]
    auto = resolve_providers("auto")
    assert auto[-1] == CPU
    assert (CUDA in auto) == HAS_CUDA


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_resolve_providers_cuda_without_cuda_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="expected an onnxruntime build with CUDA"):
        resolve_providers("cuda")


def test_resolve_providers_unknown() -> None:
    with pytest.raises(ModelError, match="expected auto, cpu or cuda, got 'tpu'"):
        resolve_providers("tpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": Path("/nonexistent/model.onnx")}, "expected a readable ONNX file"),
        ({"path": b"not an onnx model"}, "expected a model onnxruntime can load"),
        ({"path": POSE_ONNX, "intra_op_threads": -1}, "threads: expected >= 0"),
    ],
)
def test_create_session_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        create_session(**kwargs)  # type: ignore[arg-type]


def test_create_session_logs_providers_used(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="darkpose.service.runtime.onnx"):
        sess = create_session(YOLOX_ONNX, providers="cpu", intra_op_threads=1)
    assert sess.get_providers() == [CPU]
    assert "used=['CPUExecutionProvider']" in caplog.text
    assert "intra_op_threads=1" in caplog.text


def test_make_batch_dynamic_renames_dim0_and_runs_batched() -> None:
    raw = POSE_ONNX.read_bytes()
    before = onnx.load_model_from_string(raw)
    assert static_shape(graph_inputs(before)[0])[0] == 1
    dyn = make_batch_dynamic(raw)
    model = onnx.load_model_from_string(dyn)
    (inp,) = graph_inputs(model)  # the initializers listed as inputs (IR 3) are not real inputs
    assert static_shape(inp) == [BATCH_DIM, 3, 256, 192]
    assert static_shape(model.graph.output[0]) == [BATCH_DIM, 17, 64, 48]
    assert len(model.graph.value_info) == 0
    sess = create_session(dyn, providers="cpu")
    x = np.random.default_rng(0).normal(size=(3, 3, 256, 192)).astype(np.float32)
    out = sess.run(None, {inp.name: x})[0]
    assert out.shape == (3, 17, 64, 48)
    # a dynamic model is returned unchanged
    assert make_batch_dynamic(dyn) is dyn


def test_make_batch_dynamic_rejects_garbage() -> None:
    with pytest.raises(ModelError, match="expected serialised ONNX"):
        make_batch_dynamic(b"\x00\x01garbage")


def test_cpu_fallback_warning_is_logged_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(onnx_mod, "_fallback_warned", False)
    with caplog.at_level(logging.WARNING, logger="darkpose.service.runtime.onnx"):
        assert onnx_mod.warn_cpu_fallback_once("first") is True
        assert onnx_mod.warn_cpu_fallback_once("second") is False
        if not HAS_CUDA:  # auto on a CPU build: the same single warning, not one per session
            create_session(YOLOX_ONNX, providers="auto", intra_op_threads=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"providers=auto: running on {CPU}, first"]


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_diagnosis_of_a_cpu_build() -> None:
    assert onnx_mod.ort_cuda_version() is None
    assert "built without CUDA" in onnx_mod.cuda_diagnosis()


def _bn_spatial_zero(model: onnx.ModelProto) -> int:
    return sum(
        1
        for n in model.graph.node
        if n.op_type == "BatchNormalization"
        for a in n.attribute
        if a.name == "spatial" and a.i == 0
    )


def test_per_channel_bn_spatial_is_dropped_without_changing_outputs() -> None:
    """The shared SimpleBaseline (opset 8, MXNet) has spatial=0 BatchNorms with (C,) weights:
    rewritten to per-channel, which is what this onnxruntime computes for the original."""
    raw = POSE_ONNX.read_bytes()
    assert _bn_spatial_zero(onnx.load_model_from_string(raw)) > 0
    fixed = onnx_mod.drop_per_channel_bn_spatial(raw)
    assert _bn_spatial_zero(onnx.load_model_from_string(fixed)) == 0
    assert onnx_mod.drop_per_channel_bn_spatial(fixed) is fixed  # idempotent, no re-serialise
    yolox = YOLOX_ONNX.read_bytes()
    assert onnx_mod.drop_per_channel_bn_spatial(yolox) is yolox  # nothing to do: not parsed
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)
    outs = []
    for data in (make_batch_dynamic(raw), make_batch_dynamic(fixed)):
        sess = ort.InferenceSession(data, providers=[CPU])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA: auto may run on it")
def test_auto_on_a_cpu_build_logs_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CPU-only onnxruntime is the normal CPU install: auto says so at DEBUG, never WARNING."""
    monkeypatch.setattr(onnx_mod, "_fallback_warned", False)
    with caplog.at_level(logging.DEBUG, logger="darkpose.service.runtime.onnx"):
        create_session(YOLOX_ONNX, providers="auto", intra_op_threads=1)
        create_session(YOLOX_ONNX, providers="auto", intra_op_threads=1)
    fallback = [r for r in caplog.records if "providers=auto" in r.getMessage()]
    assert [r.levelno for r in fallback] == [logging.DEBUG], fallback
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
