"""Weighted boxes fusion (ensemble-boxes) of detectors: properties and the real YOLOX."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidImage, InvalidParameter
from darkpose.service.core.types import Detections, Detector
from darkpose.service.runtime.chips import ScaledDetector
from darkpose.service.runtime.fusion import FusedDetector, fuse_detections
from tests.conftest import IMAGES, YOLOX_ONNX


class FixedDetector:
    """Returns the same detections for every image."""

    def __init__(self, boxes: list[list[float]], scores: list[float]) -> None:
        self.det = Detections(
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)
        )

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        if score_threshold is None:
            return self.det
        keep = self.det.scores >= score_threshold
        return Detections(self.det.boxes[keep], self.det.scores[keep])


@st.composite
def separated_boxes(draw: st.DrawFn) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Image size and boxes in distinct 100-px cells (pairwise IoU 0), scores in (0, 1]."""
    w, h = draw(st.integers(200, 900)), draw(st.integers(200, 700))
    boxes, scores = [], []
    for gy in range(h // 100):
        for gx in range(w // 100):
            if draw(st.booleans()):
                x1 = gx * 100 + draw(st.floats(0, 40))
                y1 = gy * 100 + draw(st.floats(0, 40))
                boxes.append([x1, y1, x1 + draw(st.floats(30, 59)), y1 + draw(st.floats(30, 59))])
                scores.append(draw(st.floats(0.01, 1.0)))
    return (w, h), np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


@settings(max_examples=60, deadline=None)
@given(separated_boxes(), st.integers(1, 4))
def test_identical_detectors_fuse_to_themselves(scene: tuple, n: int) -> None:
    size, boxes, scores = scene
    out = fuse_detections([Detections(boxes, scores)] * n, size)
    assert len(out) == len(boxes)
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_allclose(np.sort(out.scores)[::-1], scores[order], rtol=1e-5)
    # same set of boxes (match each output to its nearest input)
    for b in out.boxes:
        assert np.abs(boxes - b).max(axis=1).min() < 1e-2


@settings(max_examples=60, deadline=None)
@given(separated_boxes(), st.data())
def test_fused_box_between_inputs_and_lonely_boxes_discounted(
    scene: tuple, data: st.DataObject
) -> None:  # noqa: E501
    size, boxes, scores = scene
    jitter = np.asarray(
        data.draw(st.lists(st.floats(-1.5, 1.5), min_size=boxes.size, max_size=boxes.size)),
        np.float32,
    ).reshape(boxes.shape)
    second = boxes + jitter
    out = fuse_detections([Detections(boxes, scores), Detections(second, scores)], size)
    assert len(out) == len(boxes)
    lo, hi = np.minimum(boxes, second), np.maximum(boxes, second)
    for b in out.boxes:
        i = np.abs(boxes - b).max(axis=1).argmin()
        assert (b >= lo[i] - 1e-2).all() and (b <= hi[i] + 1e-2).all()
    # a box only one of two detectors found keeps half its score (conf_type="avg")
    if len(boxes):
        only = fuse_detections([Detections(boxes, scores), Detections.empty()], size)
        np.testing.assert_allclose(np.sort(only.scores), np.sort(scores) / 2, rtol=1e-5)


def test_weights_pull_the_fused_box() -> None:
    a = FixedDetector([[10, 10, 110, 210]], [0.8])
    b = FixedDetector([[20, 20, 120, 220]], [0.8])
    img = np.zeros((300, 300, 3), np.uint8)
    even = FusedDetector([a, b]).detect(img)
    heavy_a = FusedDetector([a, b], weights=[3, 1]).detect(img)
    np.testing.assert_allclose(even.boxes[0], [15, 15, 115, 215], atol=1e-3)
    assert heavy_a.boxes[0, 0] < even.boxes[0, 0]  # closer to a's box
    assert heavy_a.boxes[0, 0] >= 10


def test_boxes_outside_image_clipped_and_empty_ok() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    det = FusedDetector([FixedDetector([[-20, -5, 250, 50]], [0.9]), FixedDetector([], [])])
    out = det.detect(img)
    np.testing.assert_allclose(out.boxes[0], [0, 0, 200, 50], atol=1e-3)
    assert len(FusedDetector([FixedDetector([], [])]).detect(img)) == 0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"detectors": []}, "detectors"),
        ({"weights": [1.0, 2.0]}, "weights"),
        ({"weights": [0.0]}, "weights"),
        ({"iou_thr": 0.0}, "iou_thr"),
        ({"skip_box_thr": 1.5}, "skip_box_thr"),
        ({"conf_type": "median"}, "conf_type"),
        ({"max_detections": 0}, "max_detections"),
    ],
)
def test_invalid_parameters(kwargs: dict, needle: str) -> None:
    args: dict = {"detectors": [FixedDetector([], [])], **kwargs}
    with pytest.raises(InvalidParameter, match=needle) as exc:
        FusedDetector(**args)
    assert "expected" in exc.value.message and "got" in exc.value.message


def test_invalid_image() -> None:
    with pytest.raises(InvalidImage, match="expected"):
        FusedDetector([FixedDetector([], [])]).detect(np.zeros((5, 5), np.uint8))


def test_fuse_yolox_scales_on_coco_mini() -> None:
    from darkpose.service.runtime.detectors import YoloxDetector

    yolox = YoloxDetector(YOLOX_ONNX, score_threshold=0.3, providers="cpu", intra_op_threads=1)
    fused = FusedDetector([yolox, ScaledDetector(yolox, 2.0)])
    assert isinstance(fused, Detector)
    n_boxes = 0
    for path in sorted(IMAGES.glob("*.jpg"))[:4]:
        image = np.asarray(cv2.imread(str(path)), np.uint8)
        out = fused.detect(image)
        h, w = image.shape[:2]
        b = out.boxes
        assert np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
        assert ((out.scores > 0) & (out.scores <= 1)).all()
        # every strong single-scale box has a fused counterpart
        ref = yolox.detect(image)
        for rb in ref.boxes[ref.scores > 0.6]:
            assert np.abs(b - rb).max(axis=1).min() < 0.25 * max(rb[2] - rb[0], rb[3] - rb[1])
        n_boxes += len(out)
    assert n_boxes > 0
