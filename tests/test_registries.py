"""One table per extension point: a decoder or a detector kind added in its table (one place) is
accepted everywhere (decode_heatmaps, options, settings, CLI, HTTP API; config parser and
builder)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest

from darkpose.service.core import codec
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import PipelineOptions
from darkpose.service.core.types import F32
from darkpose.service.runtime import detector_config as dc
from darkpose.service.runtime.detector_build import build_detector_from_config
from darkpose.service.settings import Settings
from tests.conftest import MODELS


def _centroid(heatmaps: Any, kernel: int) -> tuple[F32, F32]:
    """A toy decoder: the heatmap's centre of mass."""
    n, k, h, w = heatmaps.shape
    hm = np.clip(np.asarray(heatmaps, np.float64), 0, None) + 1e-12
    total = hm.sum(axis=(2, 3))
    xs = (hm.sum(axis=2) * np.arange(w)).sum(axis=2) / total
    ys = (hm.sum(axis=3) * np.arange(h)).sum(axis=2) / total
    coords = np.stack([xs, ys], axis=-1).astype(np.float32)
    return coords, hm.max(axis=(2, 3)).astype(np.float32)


@pytest.fixture
def centroid(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(codec.DECODERS, "centroid", _centroid)
    return "centroid"


def test_a_new_decoder_is_one_table_entry(centroid: str) -> None:
    hm = np.zeros((1, 2, 5, 7), np.float32)
    hm[0, 0, 2, 3] = 1.0
    hm[0, 1, 1, 1] = hm[0, 1, 1, 3] = 1.0
    coords, _ = codec.decode_heatmaps(hm, centroid)
    np.testing.assert_allclose(coords[0], [[3, 2], [2, 1]], atol=1e-6)
    assert PipelineOptions(decode=centroid).decode == centroid
    assert Settings(decode=centroid).pipeline.decode == centroid  # type: ignore[call-arg]
    # the CLIs build their choices from the table
    from darkpose.service.commands import eval as eval_cmd
    from darkpose.service.commands import infer as infer_cmd

    for module in (eval_cmd, infer_cmd):
        parser = argparse.ArgumentParser()
        if module is eval_cmd:
            module.add_arguments(parser)
            args = parser.parse_args(["--images", "x", "--ann", "y", "--decode", centroid])
            assert args.decode == [centroid]
        else:
            module.add_arguments(parser)
            assert parser.parse_args(["img.jpg", "--decode", centroid]).decode == centroid


def test_the_api_query_enum_is_the_decoder_table(centroid: str) -> None:
    from darkpose.service.api import create_app

    app = create_app(Settings(warmup=False, model_dir=MODELS))  # type: ignore[call-arg]
    doc = app.openapi()
    params = doc["paths"]["/pose"]["post"]["parameters"]
    decode = next(p for p in params if p["name"] == "decode")
    assert decode["schema"]["anyOf"][0]["$ref"] == "#/components/schemas/DecodeMethod"
    enum = doc["components"]["schemas"]["DecodeMethod"]["enum"]
    assert enum == ["argmax", "standard", "dark", centroid]


def test_unknown_decoders_are_refused_with_the_table_in_the_message() -> None:
    with pytest.raises(InvalidParameter, match="expected one of argmax, standard, dark"):
        PipelineOptions(decode="soft")
    with pytest.raises(ValueError, match="expected one of argmax, standard, dark"):
        Settings(decode="soft")  # type: ignore[call-arg]


def test_every_detector_kind_is_one_model_of_the_union() -> None:
    """A kind is one pydantic model in :data:`DetectorConfig`: the text form, JSON and the
    docs' table (:data:`DETECTORS`) read its fields; nesting in chips/fused needs nothing else."""
    union = dc.DetectorConfig.__origin__  # type: ignore[attr-defined]
    members = {a.__origin__ for a in union.__args__}
    assert members == set(dc.DETECTORS.values())
    spec = dc.parse_detector_config("fused(picodet(score=0.4), chips(picodet))")
    assert [c.kind for c in spec.children] == ["picodet", "chips"]
    assert spec == dc.parse_detector_config(
        {"kind": "fused", "detectors": [
            {"kind": "picodet", "score": 0.4},
            {"kind": "chips", "detector": {"kind": "picodet"}},
        ]}
    )  # fmt: skip
    settings = Settings(model_dir=MODELS, providers="cpu", intra_op_threads=1)  # type: ignore[call-arg]
    det = build_detector_from_config("picodet(score=0.4)", settings)
    assert det.score_threshold == 0.4  # type: ignore[attr-defined]
    with pytest.raises(InvalidParameter, match=r"expected an option of picodet \(model, score"):
        dc.parse_detector_config("picodet(colour=1)")


def test_the_detector_table_names_every_kind() -> None:
    assert set(dc.DETECTORS) == {"picodet", "yolox", "onnx", "htc", "chips", "fused"}
    assert tuple(dc.DETECTORS) == dc.NAMES
    with pytest.raises(InvalidParameter, match=r"expected option model=\.\.\. in onnx"):
        dc.parse_detector_config("onnx")
