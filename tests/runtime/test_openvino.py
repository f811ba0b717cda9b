"""OpenVINO backend (optional extra ``openvino``) against onnxruntime on real crops."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from darkpose.service.core.errors import ModelError
from darkpose.service.quantize import calibration_crops, measure_parity
from darkpose.service.runtime.onnx import create_session
from darkpose.service.runtime.pose import OnnxPoseModel
from darkpose.service.settings import Settings
from tests.conftest import IMAGES, KPT_ANN, MODELS

pytest.importorskip("openvino", reason="needs the optional `openvino` extra")

from darkpose.service.runtime.openvino import (  # noqa: E402
    OPENVINO_CPU,
    OpenVinoSession,
    has_native_bf16,
)

TINYPOSE = MODELS / "pp_tinypose_256x192.onnx"


@pytest.fixture(scope="module")
def ort_pose() -> OnnxPoseModel:
    return OnnxPoseModel(TINYPOSE, providers="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def crops(ort_pose: OnnxPoseModel) -> np.ndarray:
    from darkpose.service.evaluation import load_coco

    coco = load_coco(KPT_ANN)
    ids = [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=[i])][:4]
    x = calibration_crops(ort_pose.spec, IMAGES, coco, ids)
    return x[:6]


def test_fp32_matches_onnxruntime(ort_pose: OnnxPoseModel, crops: np.ndarray) -> None:
    ov_pose = OnnxPoseModel(TINYPOSE, providers="cpu", intra_op_threads=1, backend="openvino")
    assert ov_pose.providers == [OPENVINO_CPU] and ov_pose.max_batch == 8
    ref = ort_pose.infer(crops)
    out = ov_pose.infer(crops)
    assert out.shape == ref.shape == (len(crops), 17, 64, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-3)
    # one row alone (its own static-shape compile) = the same row inside the batch
    np.testing.assert_allclose(ov_pose.infer(crops[2:3])[0], out[2], atol=1e-4)
    assert ov_pose.infer(crops[:0]).shape == (0, 17, 64, 48)


@pytest.mark.skipif(not has_native_bf16(), reason="this CPU has no native bf16 (AVX512_BF16 / AMX)")
def test_bf16_keeps_confident_keypoints(ort_pose: OnnxPoseModel, crops: np.ndarray) -> None:
    bf16 = OnnxPoseModel(
        TINYPOSE, providers="cpu", intra_op_threads=1, backend="openvino", precision="bf16"
    )
    ref = ort_pose.infer(crops)
    out = bf16.infer(crops)
    parity = measure_parity(ref, out)
    assert 0.0 < parity.heatmap_max_abs < 0.5  # it really ran in reduced precision
    assert parity.keypoint_p95_confident < 1.0  # heatmap px


def test_concurrent_calls_equal_serial(crops: np.ndarray) -> None:
    pose = OnnxPoseModel(TINYPOSE, providers="cpu", intra_op_threads=1, backend="openvino")
    serial = [pose.infer(crops[i : i + 2]) for i in range(3)]
    out: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        out[i] = pose.infer(crops[i : i + 2])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        np.testing.assert_array_equal(out[i], serial[i])


def test_fixed_shape_detector_session_runs() -> None:
    sess = create_session(MODELS / "yolox_nano_416.onnx", providers="cpu", backend="openvino")
    inp = sess.get_inputs()[0]
    assert inp.shape == [1, 3, 416, 416]
    out = sess.run(None, {inp.name: np.zeros((1, 3, 416, 416), np.float32)})
    assert out[0].shape == (1, 3549, 85)


def test_unknown_output_name_is_a_model_error() -> None:
    sess = OpenVinoSession(TINYPOSE.read_bytes(), name="tinypose")
    with pytest.raises(ModelError, match=r"expected output names from \['heatmaps'\]"):
        sess.run(["nope"], {"image": np.zeros((1, 3, 256, 192), np.float32)})


def test_unreadable_model_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="expected a model OpenVINO can read"):
        OpenVinoSession(b"not a model", name="junk")


def test_settings_build_an_openvino_pose_model() -> None:
    from darkpose.service.runtime.factory import build_pose_models

    s = Settings(  # type: ignore[call-arg]
        pose_models=[TINYPOSE.name], pose_backend="openvino", intra_op_threads=1
    )
    (pose,) = build_pose_models(s)
    assert isinstance(pose, OnnxPoseModel) and pose.backend == "openvino"
    from darkpose.service.api.state import _runtime_of  # what GET /v1/models reports per pose model

    assert _runtime_of(pose) == {"backend": "openvino", "precision": "fp32"}


def test_card_chooses_backend_and_precision(tmp_path: Path) -> None:
    """A card beside the model saying openvino + bf16 is obeyed; settings/arguments win."""
    from darkpose.service.runtime.cards import resolve_card

    found = resolve_card(TINYPOSE, kind="pose")
    assert found is not None
    data = found.card.model_dump(by_alias=True, exclude_none=True)
    data.update(backend="openvino", precision="bf16" if has_native_bf16() else "fp32")
    data.pop("sha256", None)
    model = tmp_path / "tp.onnx"
    model.write_bytes(TINYPOSE.read_bytes())
    (tmp_path / "tp.card.json").write_text(json.dumps(data))
    pose = OnnxPoseModel(model, providers="cpu", intra_op_threads=1)
    assert pose.backend == "openvino" and pose.precision == data["precision"]
    forced = OnnxPoseModel(
        model, providers="cpu", intra_op_threads=1, backend="onnxruntime", precision="fp32"
    )
    assert forced.providers == ["CPUExecutionProvider"]
