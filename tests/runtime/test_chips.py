"""SNIPER-style multi-scale chips: a synthetic detector (exact geometry) and the real YOLOX."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidImage, InvalidParameter
from darkpose.service.core.types import Detections, Detector
from darkpose.service.runtime.chips import (
    DEFAULT_VALID_RANGES,
    MultiScaleChipDetector,
    Scale,
    ScaledDetector,
    chip_origins,
    default_valid_ranges,
)
from tests.conftest import IMAGES, KPT_ANN, YOLOX_ONNX


class BlobDetector:
    """Finds bright axis-aligned rectangles (connected components of pixels > 127).

    A component covering pixel columns ``x0..x1`` gives the box ``[x0 - 0.5, x1 + 0.5]``
    (pixel centres at integer positions), clipped to ``[0, W]``; score 0.9.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        self.calls.append((image.shape[1], image.shape[0]))
        if score_threshold is not None and score_threshold > 0.9:
            return Detections.empty()
        mask = (image[:, :, 0] > 127).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        if n <= 1:
            return Detections.empty()
        x, y, w, h = (stats[1:, i].astype(np.float32) for i in range(4))
        boxes = np.stack([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5], axis=1)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image.shape[1])
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image.shape[0])
        return Detections(boxes.astype(np.float32), np.full(n - 1, 0.9, np.float32))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )  # noqa: E501
    ih = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )  # noqa: E501
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None] - inter)


def draw(
    size: tuple[int, int], rects: list[tuple[int, int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:  # noqa: E501
    """Image (H, W, 3) with white rectangles (x, y, w, h) → (image, gt boxes xyxy, centre conv.)."""
    img = np.zeros((size[1], size[0], 3), np.uint8)
    gt = []
    for x, y, w, h in rects:
        img[y : y + h, x : x + w] = 255
        gt.append([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5])
    gt_arr = np.asarray(gt, np.float32).reshape(-1, 4)
    gt_arr[:, [0, 2]] = np.clip(gt_arr[:, [0, 2]], 0, size[0])
    gt_arr[:, [1, 3]] = np.clip(gt_arr[:, [1, 3]], 0, size[1])
    return img, gt_arr


@st.composite
def scenes(
    draw_: st.DrawFn, max_side: int = 60
) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:  # noqa: E501
    """Image size and non-overlapping rectangles, one per 80-px grid cell at most."""
    w = draw_(st.integers(100, 520))
    h = draw_(st.integers(100, 400))
    rects = []
    for gy in range(h // 80):
        for gx in range(w // 80):
            if not draw_(st.booleans()):
                continue
            rw = draw_(st.integers(8, max_side))
            rh = draw_(st.integers(8, max_side))
            ox = draw_(st.integers(0, 80 - min(rw, 76) - 4))
            oy = draw_(st.integers(0, 80 - min(rh, 76) - 4))
            rects.append((gx * 80 + ox, gy * 80 + oy, min(rw, 76), min(rh, 76)))
    return (w, h), rects


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_boxes_map_back_onto_objects(scene: tuple[tuple[int, int], list]) -> None:
    """Every object is found once, where it is, through two overlapping scales of chips."""
    size, rects = scene
    image, gt = draw(size, rects)
    det = MultiScaleChipDetector(
        BlobDetector(), scales=(1.0, 2.0), chip_size=192, stride=64,
        valid_ranges=((40.0, math.inf), (0.0, 40.0)),
    )  # fmt: skip
    out = det.detect(image)
    assert len(out) == len(rects)
    if rects:
        iou = iou_matrix(out.boxes, gt)
        # one-to-one: each found box overlaps exactly its own rectangle
        assert (iou.max(axis=1) > 0.85).all(), iou.max(axis=1)
        assert sorted(iou.argmax(axis=1).tolist()) == list(range(len(rects)))
    assert out.boxes.dtype == np.float32 and out.scores.dtype == np.float32


@settings(max_examples=25, deadline=None)
@given(scenes(max_side=70), st.floats(10.0, 60.0))
def test_valid_range_selects_sizes(scene: tuple[tuple[int, int], list], hi: float) -> None:
    """With one scale and range [0, hi), exactly the objects with sqrt(w h) < hi remain."""
    size, rects = scene
    image, gt = draw(size, rects)
    side = np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))
    margin_ok = np.abs(side - hi) > 1.0  # avoid sqrt-area ties at the limit
    det = MultiScaleChipDetector(
        BlobDetector(), scales=(1.0,), chip_size=600, stride=600, valid_ranges=((0.0, hi),)
    )
    out = det.detect(image)
    found = np.zeros(len(rects), bool)
    if len(out):
        found[iou_matrix(out.boxes, gt).argmax(axis=1)] = True
    assert (found[margin_ok] == (side[margin_ok] < hi)).all()


def test_truncated_boxes_dropped_but_image_border_kept() -> None:
    # two 128-px chips side by side without overlap: the object straddling x=128 is cut by
    # both chips' inner borders → dropped; the one on the image border is kept.
    image, gt = draw((256, 128), [(100, 40, 60, 30), (0, 10, 20, 20), (200, 90, 56, 38)])
    det = MultiScaleChipDetector(
        BlobDetector(), scales=(1.0,), chip_size=128, stride=128, valid_ranges=((0, math.inf),)
    )
    out = det.detect(image)
    iou = iou_matrix(out.boxes, gt)
    assert len(out) == 2
    assert sorted(iou.argmax(axis=1).tolist()) == [1, 2]
    # with overlap, a chip sees it whole and it comes back
    det2 = MultiScaleChipDetector(
        BlobDetector(), scales=(1.0,), chip_size=128, stride=64, valid_ranges=((0, math.inf),)
    )
    assert len(det2.detect(image)) == 3


def test_fit_scale_is_one_chip() -> None:
    inner = BlobDetector()
    det = MultiScaleChipDetector(inner, scales=("fit",), chip_size=256, stride=128)
    image, gt = draw((640, 480), [(300, 200, 120, 200)])
    out = det.detect(image)
    assert inner.calls == [(256, 192)]
    assert len(out) == 1 and iou_matrix(out.boxes, gt)[0, 0] > 0.95


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(32, 700), st.data())
def test_chip_origins_cover(length: int, chip: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, chip))
    starts = chip_origins(length, chip, stride)
    assert starts[0] == 0
    assert all(0 <= s <= max(0, length - chip) for s in starts)
    assert min(length, starts[-1] + chip) == length  # reaches the end
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_scaled_detector_maps_back() -> None:
    image, gt = draw((300, 200), [(50, 40, 30, 60), (200, 100, 50, 50)])
    for f in (0.5, 1.0, 2.0, 3.0):
        out = ScaledDetector(BlobDetector(), f).detect(image)
        assert len(out) == 2
        assert iou_matrix(out.boxes, gt).max(axis=1).min() > 0.85


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"scales": ()}, "scales"),
        ({"scales": (0.0,)}, "scales"),
        ({"scales": ("huge",)}, "scales"),
        ({"scales": (1.0, float("nan"))}, "scales"),
        ({"chip_size": 8}, "chip_size"),
        ({"stride": 0}, "stride"),
        ({"stride": 1000}, "stride"),
        ({"scales": (1.0,), "valid_ranges": ((0, 10), (10, 20))}, "valid_ranges"),
        ({"scales": (1.0,), "valid_ranges": ((20, 10),)}, "valid_ranges"),
        ({"nms_iou": 0.0}, "nms_iou"),
        ({"border_margin": -1.0}, "border_margin"),
        ({"max_detections": 0}, "max_detections"),
    ],
)
def test_invalid_parameters(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidParameter, match=needle) as exc:
        MultiScaleChipDetector(BlobDetector(), **kwargs)
    assert "expected" in exc.value.message and "got" in exc.value.message


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 5, 3), np.uint8),
        "x",
    ],  # noqa: E501
)
def test_invalid_image(image: object) -> None:
    with pytest.raises(InvalidImage, match="expected"):
        MultiScaleChipDetector(BlobDetector()).detect(image)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- real YOLOX
@pytest.fixture(scope="module")
def yolox() -> Detector:
    from darkpose.service.runtime.detectors import YoloxDetector

    return YoloxDetector(YOLOX_ONNX, score_threshold=0.3, providers="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def person_images() -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, gt person boxes xyxy) for the 6 coco-mini images with the most persons."""
    ann = json.loads(KPT_ANN.read_text())
    by_img: dict[int, list] = {}
    for a in ann["annotations"]:
        if a["category_id"] == 1 and not a["iscrowd"]:
            by_img.setdefault(a["image_id"], []).append(a["bbox"])
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    out = []
    for iid in sorted(by_img, key=lambda i: -len(by_img[i]))[:6]:
        img = cv2.imread(str(IMAGES / files[iid]))
        assert img is not None
        b = np.asarray(by_img[iid], np.float32)
        out.append((img, np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)))
    return out


def test_yolox_chips_one_chip_identity(yolox: Detector, person_images: list) -> None:
    """One scale 1x, a chip larger than the image, no range, no NMS → exactly YOLOX."""
    det = MultiScaleChipDetector(
        yolox, scales=(1.0,), chip_size=2048, stride=2048, valid_ranges=((0, math.inf),),
        nms_iou=1.0,
    )  # fmt: skip
    image = person_images[0][0]
    ref, got = yolox.detect(image), det.detect(image)
    assert len(ref) > 0
    np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, ref.scores)


def test_yolox_chips_on_coco_mini(yolox: Detector, person_images: list) -> None:
    det = MultiScaleChipDetector(yolox)
    matched = total = 0
    for image, gt in person_images:
        out = det.detect(image)
        h, w = image.shape[:2]
        b = out.boxes
        assert np.isfinite(b).all() and (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert (b[:, [0, 2]] >= 0).all() and (b[:, [0, 2]] <= w).all()
        assert (b[:, [1, 3]] >= 0).all() and (b[:, [1, 3]] <= h).all()
        assert ((out.scores >= 0) & (out.scores <= 1)).all()
        assert (np.diff(out.scores) <= 0).all()
        if len(out):
            matched += int((iou_matrix(gt, b).max(axis=1) >= 0.5).sum())
        total += len(gt)
    assert isinstance(det, Detector)
    assert matched >= total // 2, (matched, total)


@pytest.mark.parametrize(
    ("scales", "expected"),
    [
        (("fit", 2.0), DEFAULT_VALID_RANGES),
        ((2.0, "fit"), DEFAULT_VALID_RANGES[::-1]),
        (("fit", 3.0), DEFAULT_VALID_RANGES),
        ((1.0, 2.0), ((0.0, math.inf), (0.0, math.inf))),
        (("fit", 0.5), ((0.0, math.inf), (0.0, math.inf))),
        (("fit", 2.0, 3.0), ((0.0, math.inf),) * 3),
    ],
)
def test_default_valid_ranges_follow_the_scales_not_their_order(
    scales: tuple[Scale, ...], expected: tuple[tuple[float, float], ...]
) -> None:
    assert default_valid_ranges(scales) == tuple(expected)
    det = MultiScaleChipDetector(BlobDetector(), scales=scales)
    assert det.valid_ranges == tuple(expected)
