"""YOLOX detector on the real shared model: letterbox, grid decode, thresholds, bad inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidImage, InvalidParameter
from darkpose.service.core.types import Detections, Detector
from darkpose.service.runtime.detectors import PAD_VALUE, YoloxDetector, letterbox, make_grids
from tests.conftest import IMAGES, KPT_ANN, YOLOX_ONNX

CROWD_IMAGE = IMAGES / "000000370162.jpg"  # 14 annotated persons


@pytest.fixture(scope="module")
def yolox() -> YoloxDetector:
    return YoloxDetector(YOLOX_ONNX, score_threshold=0.3, providers="cpu", intra_op_threads=1)


def test_grid_order_and_size() -> None:
    grid, strides = make_grids((416, 416))
    assert grid.shape == (3549, 2) and strides.shape == (3549, 1)
    assert grid[:3].tolist() == [[0, 0], [1, 0], [2, 0]]  # row-major, x fastest
    assert grid[52].tolist() == [0, 1]
    assert strides[0, 0] == 8 and strides[52 * 52, 0] == 16 and strides[-1, 0] == 32


def test_letterbox_top_left_with_pad() -> None:
    img = np.full((100, 200, 3), 7, np.uint8)
    blob, r = letterbox(img, (416, 416))
    assert r == pytest.approx(2.08)
    assert blob.shape == (1, 3, 416, 416) and blob.dtype == np.float32
    assert np.all(blob[0, :, :208, :416] == 7)  # content at the top-left, BGR 0-255 unscaled
    assert np.all(blob[0, :, 208:, :] == PAD_VALUE)


@settings(max_examples=30, deadline=None)
@given(
    anchor=st.integers(0, 3548),
    off=st.tuples(st.floats(-0.5, 0.5), st.floats(-0.5, 0.5)),
    logwh=st.tuples(st.floats(-1, 2), st.floats(-1, 2)),
    ratio=st.floats(0.5, 3.0),
)
def test_grid_decode_of_one_anchor(
    yolox: YoloxDetector,
    anchor: int,
    off: tuple[float, float],
    logwh: tuple[float, float],
    ratio: float,
) -> None:
    raw = np.zeros((3549, 85), np.float32)
    raw[anchor, :4] = [off[0], off[1], logwh[0], logwh[1]]
    raw[anchor, 4] = 0.9
    raw[anchor, 5] = 0.8
    raw[anchor, 6] = 0.99  # another class: must not matter
    det = yolox.postprocess([raw], (ratio, ratio), (100000, 100000), 0.3)
    grid, strides = make_grids((416, 416))
    s = strides[anchor, 0]
    cx = (grid[anchor, 0] + off[0]) * s
    cy = (grid[anchor, 1] + off[1]) * s
    w, h = np.exp(logwh[0]) * s, np.exp(logwh[1]) * s
    expected = np.clip(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) / ratio, 0, None)
    if min(expected[2] - expected[0], expected[3] - expected[1]) <= 1e-3:
        # Entirely above/left of the image (anchor 0 shifted by -0.5 cells): clipped to zero
        # extent, the detector drops it.
        assert len(det) == 0
        return
    assert len(det) == 1
    np.testing.assert_allclose(det.scores, [0.72], rtol=1e-5)
    np.testing.assert_allclose(det.boxes[0], expected, rtol=1e-4, atol=1e-3)


def test_non_person_class_and_low_scores_give_nothing(yolox: YoloxDetector) -> None:
    raw = np.zeros((3549, 85), np.float32)
    raw[10, 4], raw[10, 6] = 0.95, 0.95  # a confident bicycle
    raw[20, 4], raw[20, 5] = 0.5, 0.5  # person at 0.25 < 0.3
    assert len(yolox.postprocess([raw], (1.0, 1.0), (416, 416), 0.3)) == 0


def test_finds_the_persons_of_a_crowd_image(yolox: YoloxDetector) -> None:
    assert isinstance(yolox, Detector)
    img = cv2.imread(str(CROWD_IMAGE))
    det = yolox.detect(img)
    h, w = img.shape[:2]
    assert isinstance(det, Detections)
    assert len(det) >= 6
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32
    assert np.all(det.scores >= 0.3) and np.all(np.diff(det.scores) <= 0)
    assert np.all(det.boxes[:, [0, 2]] >= 0) and np.all(det.boxes[:, [0, 2]] <= w)
    assert np.all(det.boxes[:, [1, 3]] >= 0) and np.all(det.boxes[:, [1, 3]] <= h)
    # the largest annotated person is found (IoU > 0.7)
    ann = json.loads(KPT_ANN.read_text())
    gts = [a["bbox"] for a in ann["annotations"] if a["image_id"] == 370162 and not a["iscrowd"]]
    x, y, bw, bh = max(gts, key=lambda b: b[2] * b[3] if b[2] * b[3] < w * h * 0.5 else 0)
    gt = np.array([x, y, x + bw, y + bh])
    lo, hi = np.maximum(det.boxes[:, :2], gt[:2]), np.minimum(det.boxes[:, 2:], gt[2:])
    ix = np.clip(hi - lo, 0, None)
    inter = ix[:, 0] * ix[:, 1]
    area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    iou = inter / (area + bw * bh - inter)
    assert iou.max() > 0.7
    # a higher per-call threshold only removes boxes
    strict = yolox.detect(img, score_threshold=0.6)
    assert 0 < len(strict) < len(det)


@pytest.mark.parametrize("shape", [(416, 416, 3), (9, 9, 3), (1, 1, 3), (3000, 20, 3)])
def test_no_person_images_do_not_crash(yolox: YoloxDetector, shape: tuple[int, ...]) -> None:
    det = yolox.detect(np.full(shape, 128, np.uint8))
    assert len(det) == 0


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.uint16),
        np.zeros((0, 10, 3), np.uint8),
    ],
)
def test_bad_images(yolox: YoloxDetector, image: np.ndarray) -> None:
    with pytest.raises(InvalidImage, match="expected"):
        yolox.detect(image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"score_threshold": 1.5}, "score_threshold: expected"),
        ({"nms_iou": 0.0}, "nms_iou: expected"),
        ({"max_detections": 0}, "max_detections: expected"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(InvalidParameter, match=match):
        YoloxDetector(YOLOX_ONNX, providers="cpu", **kwargs)  # type: ignore[arg-type]


def test_max_detections(yolox: YoloxDetector) -> None:
    few = YoloxDetector(YOLOX_ONNX, max_detections=2, providers="cpu", intra_op_threads=1)
    assert len(few.detect(cv2.imread(str(CROWD_IMAGE)))) == 2
