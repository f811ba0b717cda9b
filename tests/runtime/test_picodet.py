"""The card-driven ONNX detector on the real PicoDet: box mapping (property), decoding, NMS, and
the per-call score threshold through every detector kind."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import ModelError
from darkpose.service.core.types import Detections, Detector
from darkpose.service.runtime.detector_build import build_detector_from_config
from darkpose.service.runtime.detectors import PicoDetDetector, stretch
from darkpose.service.runtime.htc import mmdet_available
from darkpose.service.settings import Settings
from tests.conftest import IMAGES, KPT_ANN, MODELS

PICODET_ONNX = MODELS / "picodet_s_416_pedestrian.onnx"
CROWD = IMAGES / "000000370162.jpg"


@pytest.fixture(scope="module")
def picodet() -> PicoDetDetector:
    return PicoDetDetector(PICODET_ONNX, score_threshold=0.3, providers="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    return np.asarray(cv2.imread(str(CROWD)), np.uint8)


def test_stretch_is_a_plain_resize() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = (10, 20, 30)  # left half, BGR
    blob, (sx, sy) = stretch(img, (416, 416))
    assert blob.shape == (1, 3, 416, 416) and (sx, sy) == (2.08, 4.16)
    assert np.all(blob[0, :, :, :200] == np.array([10, 20, 30])[:, None, None])  # no letterbox
    assert np.all(blob[0, :, :, 216:] == 0)


def test_preprocess_follows_the_card(picodet: PicoDetDetector) -> None:
    img = np.full((50, 80, 3), (0, 128, 255), np.uint8)  # BGR
    x, _ = picodet.preprocess(img)
    mean, std = np.array(picodet.card.input.mean), np.array(picodet.card.input.std)
    want = (np.array([255, 128, 0]) / 255.0 - mean) / std  # RGB, /255, mean/std
    np.testing.assert_allclose(x[0, :, 10, 10], want, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    size=st.tuples(st.integers(20, 3000), st.integers(20, 3000)),
    box=st.tuples(st.floats(0, 300), st.floats(0, 300), st.floats(10, 116), st.floats(10, 116)),
    score=st.floats(0.31, 1.0),
)
def test_boxes_map_from_input_to_image_pixels(
    picodet: PicoDetDetector,
    size: tuple[int, int],
    box: tuple[float, float, float, float],
    score: float,
) -> None:
    """A box (x1, y1, x2, y2) in 416x416 input px comes back as ``x * W / 416``,
    ``y * H / 416`` in an image of (W, H) (plain stretch, no letterbox offset)."""
    w, h = size
    x1, y1, bw, bh = box
    raw = np.zeros((3598, 4), np.float32)
    raw[7] = [x1, y1, x1 + bw, y1 + bh]
    scores = np.zeros((1, 3598), np.float32)
    scores[0, 7] = score
    det = picodet.postprocess([raw, scores], (416 / w, 416 / h), (w, h), 0.3)
    assert len(det) == 1
    want = np.array([x1 * w / 416, y1 * h / 416, (x1 + bw) * w / 416, (y1 + bh) * h / 416])
    np.testing.assert_allclose(det.boxes[0], want, rtol=1e-5, atol=1e-3)
    assert det.scores[0] == pytest.approx(score)
    # and the round trip through the real pre-processing scale of an image of that size
    _, scale = stretch(np.zeros((h, w, 3), np.uint8), (416, 416))
    np.testing.assert_allclose(scale, (416 / w, 416 / h))


def test_nms_threshold_and_cap(picodet: PicoDetDetector) -> None:
    raw = np.zeros((3598, 4), np.float32)
    raw[:3] = [[10, 10, 110, 210], [12, 12, 112, 212], [200, 10, 300, 210]]  # 0 and 1 overlap
    scores = np.zeros((1, 3598), np.float32)
    scores[0, :3] = [0.9, 0.8, 0.5]
    det = picodet.postprocess([raw, scores], (1.0, 1.0), (416, 416), 0.3)
    assert det.scores.tolist() == pytest.approx([0.9, 0.5])
    assert len(picodet.postprocess([raw, scores], (1.0, 1.0), (416, 416), 0.6)) == 1


def test_finds_the_annotated_persons(picodet: PicoDetDetector, crowd: np.ndarray) -> None:
    ann = json.loads(KPT_ANN.read_text())
    img_id = int(CROWD.stem)
    gt = [a["bbox"] for a in ann["annotations"] if a["image_id"] == img_id and a["area"] > 3000]
    det = picodet.detect(crowd)
    assert isinstance(picodet, Detector) and len(det) >= len(gt) // 2
    b = det.boxes
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    assert b[:, [0, 2]].max() <= crowd.shape[1] and b[:, [1, 3]].max() <= crowd.shape[0]
    assert np.all(np.diff(det.scores) <= 0)
    # each large GT person overlaps a detection
    for x, y, w, h in gt:
        iw = np.clip(np.minimum(b[:, 2], x + w) - np.maximum(b[:, 0], x), 0, None)
        ih = np.clip(np.minimum(b[:, 3], y + h) - np.maximum(b[:, 1], y), 0, None)
        assert (iw * ih / (w * h)).max() > 0.5


def test_misshapen_outputs_are_model_errors(picodet: PicoDetDetector) -> None:
    with pytest.raises(ModelError, match="expected scores"):
        picodet.postprocess(
            [np.zeros((10, 4), np.float32), np.zeros((1, 11), np.float32)],
            (1.0, 1.0),
            (416, 416),
            0.3,
        )


def _cases() -> list[Any]:
    cases = ["picodet", "yolox", "chips(picodet)", "fused(picodet,yolox)", "picodet@2x"]
    htc = pytest.param(
        "htc(random=1)",
        marks=pytest.mark.skipif(not mmdet_available(), reason="mmdet extra not installed"),
    )
    return [*cases, htc]


@pytest.mark.parametrize("config", _cases())
def test_per_call_score_threshold_on_every_detector_kind(config: str, crowd: np.ndarray) -> None:
    """``detect(image, score_threshold)`` is honoured by leaves and composites alike: a high
    threshold keeps only boxes scoring at least that, a low one keeps more."""
    s = Settings(model_dir=MODELS, providers="cpu", intra_op_threads=1)  # type: ignore[call-arg]
    det = build_detector_from_config(config, s)
    low: Detections = det.detect(crowd, score_threshold=0.05)
    high: Detections = det.detect(crowd, score_threshold=0.6)
    default: Detections = det.detect(crowd)
    assert np.all(high.scores >= 0.6 - 1e-6) and np.all(low.scores >= 0.05 - 1e-6)
    if not config.startswith("htc"):
        assert len(low) > len(high) >= 1
        assert len(low) >= len(default) >= len(high)


def test_detector_cap_and_request_cap_are_two_settings(crowd: np.ndarray) -> None:
    s = Settings(  # type: ignore[call-arg]
        model_dir=MODELS, providers="cpu", intra_op_threads=1, det_max_detections=3
    )
    det = build_detector_from_config("picodet", s)
    assert len(det.detect(crowd, score_threshold=0.05)) == 3
    assert s.max_persons == 100  # the request-side cap is untouched
