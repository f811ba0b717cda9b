"""Backend / precision choice of a model session: errors and serving without the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from darkpose.service.core.errors import ModelError
from darkpose.service.runtime.onnx import create_session
from tests.conftest import MODELS, REPO

TINYPOSE = MODELS / "pp_tinypose_256x192.onnx"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "tensorrt"}, "backend: expected one of onnxruntime, openvino"),
        ({"precision": "int4"}, "precision: expected one of fp32, bf16"),
        ({"precision": "bf16"}, "expected fp32 with backend onnxruntime"),
        ({"backend": "openvino", "providers": "cuda"}, "expected providers auto or cpu"),
    ],
)
def test_create_session_backend_errors(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        create_session(TINYPOSE, **kwargs)


def test_serving_works_without_openvino() -> None:
    """With the openvino package unimportable, onnxruntime models still load and the openvino
    backend is a ModelError naming the extra."""
    code = (
        "import sys; sys.modules['openvino'] = None\n"
        "from darkpose.service.runtime.pose import OnnxPoseModel\n"
        "from darkpose.service.core.errors import ModelError\n"
        f"m = OnnxPoseModel({str(TINYPOSE)!r}, providers='cpu', intra_op_threads=1)\n"
        "print('ort', m.providers[0])\n"
        "try:\n"
        f"    OnnxPoseModel({str(TINYPOSE)!r}, providers='cpu', backend='openvino')\n"
        "except ModelError as e:\n"
        "    print('error', e.message)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "ort CPUExecutionProvider" in out.stdout
    assert "expected the optional openvino package" in out.stdout


def test_card_precision_values() -> None:
    from darkpose.service.core.cards import ModelCard
    from darkpose.service.core.types import ModelSpec

    for precision, runtime in [("fp32", "fp32"), ("bf16", "bf16"), ("int8", "fp32")]:
        card = ModelCard.from_spec(ModelSpec(), precision=precision)
        assert card.float_precision == runtime
    with pytest.raises(ModelError, match="precision"):
        ModelCard.from_spec(ModelSpec(), precision="int4")
    with pytest.raises(ModelError, match="backend"):
        ModelCard.from_spec(ModelSpec(), backend="tensorrt")
