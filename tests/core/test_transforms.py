"""Affine convention of darkpose.service.core.transforms: mmpose parity, round trips, crops."""

from __future__ import annotations

import json
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.transforms import (
    MIN_BOX_SIZE,
    boxes_to_center_scale,
    cut_crops,
    get_affine_matrices,
    heatmap_to_image,
    image_to_heatmap,
    normalize_crops,
    warp_crops,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from darkpose.service.core.types import ModelSpec
from tests.conftest import GOLDEN, IMAGES, KPT_ANN, POSE_ONNX

coord = st.floats(-2000, 2000, allow_nan=False)
size = st.floats(1.0, 2000.0, allow_nan=False)
aspect = st.sampled_from([192 / 256, 288 / 384, 1.0, 4 / 3])


@st.composite
def boxes(draw: Any, max_n: int = 6) -> np.ndarray:
    n = draw(st.integers(1, max_n))
    rows = []
    for _ in range(n):
        x, y, w, h = draw(coord), draw(coord), draw(size), draw(size)
        rows.append([x, y, x + w, y + h])
    return np.array(rows, np.float64)


def mmpose_center_scale(box: np.ndarray, aspect_ratio: float, padding: float) -> tuple:
    """mmpose 1.x bbox_xyxy2cs + TopdownAffine._fix_aspect_ratio, one box, plain Python."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect_ratio:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h])


def mmpose_warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple) -> np.ndarray:
    """mmpose get_warp_matrix(center, scale, rot=0, output_size) via cv2.getAffineTransform."""
    src_w = scale[0]
    dst_w, dst_h = output_size
    src_dir = np.array([0.0, src_w * -0.5])
    dst_dir = np.array([0.0, dst_w * -0.5])

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b
        return b + np.array([-d[1], d[0]])

    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + src_dir
    src[2] = third(src[0], src[1])
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    dst[2] = third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


@settings(max_examples=60, deadline=None)
@given(b=boxes())
def test_xywh_round_trip(b: np.ndarray) -> None:
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b, rtol=1e-5, atol=1e-3)


def test_xywh_values() -> None:
    np.testing.assert_array_equal(xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])
    np.testing.assert_array_equal(xyxy_to_xywh([[1, 2, 4, 6]]), [[1, 2, 3, 4]])


@settings(max_examples=80, deadline=None)
@given(b=boxes(), ar=aspect, padding=st.sampled_from([1.0, 1.25, 1.5]))
def test_center_scale_matches_mmpose(b: np.ndarray, ar: float, padding: float) -> None:
    centers, scales = boxes_to_center_scale(b, ar, padding)
    assert centers.shape == scales.shape == (len(b), 2)
    for i, box in enumerate(b):
        c_ref, s_ref = mmpose_center_scale(box, ar, padding)
        np.testing.assert_allclose(centers[i], c_ref, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(scales[i], s_ref, rtol=1e-5)
    np.testing.assert_allclose(scales[:, 0] / scales[:, 1], ar, rtol=1e-5)


def test_center_scale_degenerate_boxes_get_minimum_size() -> None:
    b = np.array([[5, 5, 5, 5], [10, 10, 9, 8], [0, 0, 0, 20]], np.float32)
    centers, scales = boxes_to_center_scale(b, 0.75, 1.25)
    assert np.all(np.isfinite(scales)) and np.all(scales >= MIN_BOX_SIZE * 0.75)
    np.testing.assert_allclose(centers[0], [5, 5])
    np.testing.assert_allclose(scales[2], [15 * 1.25, 20 * 1.25])


@settings(max_examples=80, deadline=None)
@given(
    b=boxes(max_n=4),
    out=st.sampled_from([(192, 256), (48, 64), (288, 384), (256, 256)]),
)
def test_matrices_equal_mmpose_get_warp_matrix(b: np.ndarray, out: tuple) -> None:
    centers, scales = boxes_to_center_scale(b, out[0] / out[1], 1.25)
    mats = get_affine_matrices(centers, scales, out)
    assert mats.shape == (len(b), 2, 3) and mats.dtype == np.float64
    for i in range(len(b)):
        ref = mmpose_warp_matrix(centers[i].astype(np.float64), scales[i], out)
        # the reference goes through float32 points: compare the mapping of the box corners
        pts = np.array([[*b[i, :2], 1.0], [*b[i, 2:], 1.0], [*centers[i], 1.0]])
        np.testing.assert_allclose(pts @ mats[i].T, pts @ ref.T, atol=2e-2, rtol=1e-4)
        np.testing.assert_allclose(mats[i][:, :2], ref[:, :2], rtol=1e-4, atol=1e-6)


def test_center_maps_to_half_output_size() -> None:
    m = get_affine_matrices([[100.0, 50.0]], [[30.0, 40.0]], (192, 256))[0]
    np.testing.assert_allclose(m @ [100.0, 50.0, 1.0], [96.0, 128.0])
    # the top-left corner of the crop region maps to (0, 0), not to (-0.5, -0.5)
    np.testing.assert_allclose(m @ [85.0, 30.0, 1.0], [0.0, 0.0], atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(b=boxes(max_n=4))
def test_inverse_matrix_inverts_forward(b: np.ndarray) -> None:
    centers, scales = boxes_to_center_scale(b, 0.75)
    fwd = get_affine_matrices(centers, scales, (192, 256))
    inv = get_affine_matrices(centers, scales, (192, 256), inverse=True)
    bottom = np.broadcast_to([0.0, 0.0, 1.0], (len(b), 1, 3))
    compose = np.concatenate([inv, bottom], 1) @ np.concatenate([fwd, bottom], 1)
    np.testing.assert_allclose(compose, np.broadcast_to(np.eye(3), compose.shape), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    b=boxes(max_n=3),
    pts=st.lists(st.tuples(coord, coord), min_size=1, max_size=5),
    hm=st.sampled_from([(48, 64), (72, 96), (64, 64)]),
)
def test_image_heatmap_round_trip(b: np.ndarray, pts: list, hm: tuple) -> None:
    centers, scales = boxes_to_center_scale(b, hm[0] / hm[1])
    p = np.broadcast_to(np.array(pts, np.float64), (len(b), len(pts), 2))
    back = heatmap_to_image(image_to_heatmap(p, centers, scales, hm), centers, scales, hm)
    assert back.shape == p.shape
    np.testing.assert_allclose(back, p, atol=1e-3, rtol=0)


@settings(max_examples=60, deadline=None)
@given(b=boxes(max_n=3), u=st.floats(-10, 60), v=st.floats(-10, 80))
def test_heatmap_to_image_matches_inverse_affine_of_input(
    b: np.ndarray, u: float, v: float
) -> None:
    """heatmap → input by × input_W / heatmap_W, then the inverse affine of the input crop."""
    spec = ModelSpec()
    centers, scales = boxes_to_center_scale(b, spec.aspect_ratio)
    inv = get_affine_matrices(centers, scales, spec.input_size, inverse=True)
    stride = spec.input_size[0] / spec.heatmap_size[0]
    ref = inv @ np.array([u * stride, v * stride, 1.0])
    got = heatmap_to_image(np.full((len(b), 1, 2), [u, v]), centers, scales, spec.heatmap_size)
    np.testing.assert_allclose(got[:, 0], ref, atol=1e-3, rtol=1e-6)


def test_warp_crops_identity_scale_is_a_translation() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    W, H = 48, 64
    centers = np.array([[200.0, 150.0], [24.0, 32.0]])
    scales = np.array([[W, H], [W, H]], np.float64)
    crops = warp_crops(img, centers, scales, (W, H))
    assert crops.shape == (2, 3, H, W) and crops.dtype == np.float32
    np.testing.assert_array_equal(
        crops[0], img[150 - 32 : 150 + 32, 200 - 24 : 200 + 24].transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(crops[1], img[:H, :W].transpose(2, 0, 1))


def test_warp_crops_normalisation_and_channel_order() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    c, s = boxes_to_center_scale([[10, 5, 70, 110], [0, 0, 90, 120]], 0.75)
    raw = warp_crops(img, c, s, (48, 64))
    spec = ModelSpec(input_size=(48, 64), heatmap_size=(12, 16))
    net = warp_crops(img, c, s, (48, 64), spec)
    rgb = raw[:, ::-1]
    ref = (rgb / 255.0 - np.array(spec.mean)[:, None, None]) / np.array(spec.std)[:, None, None]
    np.testing.assert_allclose(net, ref, atol=1e-5)
    bgr_spec = ModelSpec(channel_order="BGR", pixel_scale=1.0, mean=(1, 2, 3), std=(2, 2, 2))
    bgr = warp_crops(img, c, s, (48, 64), bgr_spec)
    ref_bgr = (raw - np.array([1.0, 2, 3])[:, None, None]) / 2.0
    np.testing.assert_allclose(bgr, ref_bgr, atol=1e-5)


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_cut_then_normalize_equals_warp_crops_bit_for_bit(channel_order: str) -> None:
    """The uint8 crops a Ray pose replica receives normalise to exactly the local input."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    c, s = boxes_to_center_scale([[10, 5, 70, 110], [-20, 30, 60, 150]], 0.75)
    spec = ModelSpec(input_size=(48, 64), heatmap_size=(12, 16), channel_order=channel_order)
    crops = cut_crops(img, c, s, (48, 64))
    assert crops.shape == (2, 64, 48, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(
        normalize_crops(crops, spec), warp_crops(img, c, s, (48, 64), spec)
    )
    np.testing.assert_array_equal(crops.transpose(0, 3, 1, 2), warp_crops(img, c, s, (48, 64)))
    with pytest.raises(InvalidParameter, match=r"crops: expected shape \(N, H, W, 3\), got"):
        normalize_crops(crops.transpose(0, 3, 1, 2), spec)


def test_warp_crops_off_image_and_degenerate_boxes() -> None:
    img = np.full((50, 60, 3), 200, np.uint8)
    b = np.array([[-500, -500, -400, -300], [10, 10, 10, 10], [1e5, 1e5, 1e5 + 1, 1e5 + 1]])
    c, s = boxes_to_center_scale(b, 0.75)
    crops = warp_crops(img, c, s, (24, 32))
    assert np.all(np.isfinite(crops))
    assert crops[0].max() == 0 and crops[2].max() == 0  # fully outside: black
    assert crops[1].min() == 200  # a point box inside a uniform image: its colour
    net = warp_crops(img, c, s, (24, 32), ModelSpec())
    np.testing.assert_allclose(net[0, 0], -0.485 / 0.229, atol=1e-5)


def test_warp_crops_zero_boxes() -> None:
    img = np.zeros((20, 20, 3), np.uint8)
    out = warp_crops(img, np.zeros((0, 2)), np.zeros((0, 2)), (192, 256), ModelSpec())
    assert out.shape == (0, 3, 256, 192)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: xywh_to_xyxy(np.zeros((3, 5))), "expected shape (N, 4)"),
        (lambda: boxes_to_center_scale(np.zeros(4), 0.75), "expected shape (N, 4)"),
        (lambda: boxes_to_center_scale([[0, 0, np.nan, 1]], 0.75), "expected finite"),
        (lambda: boxes_to_center_scale([[0, 0, 1, 1]], 0.0), "aspect_ratio: expected"),
        (lambda: boxes_to_center_scale([[0, 0, 1, 1]], 0.75, -1), "padding: expected"),
        (lambda: get_affine_matrices(np.zeros((2, 2)), np.ones((3, 2)), (4, 4)), "same N"),
        (lambda: get_affine_matrices(np.zeros((1, 2)), np.ones((1, 2)), (0, 4)), "output_size"),
        (
            lambda: warp_crops(np.zeros((4, 4)), np.zeros((1, 2)), np.ones((1, 2)), (4, 4)),
            "(H, W, 3)",
        ),
        (
            lambda: warp_crops(np.zeros((0, 4, 3)), np.zeros((1, 2)), np.ones((1, 2)), (4, 4)),
            "non-empty",
        ),
        (
            lambda: heatmap_to_image(
                np.zeros((2, 3, 2)), np.zeros((1, 2)), np.ones((1, 2)), (4, 4)
            ),
            "same N",
        ),
        (
            lambda: image_to_heatmap(
                np.zeros((1, 3, 3)), np.zeros((1, 2)), np.ones((1, 2)), (4, 4)
            ),
            "expected shape (N, K, 2)",
        ),
        (lambda: xyxy_to_xywh("abc"), "expected a numeric array"),
    ],
)
def test_errors(call: Any, needle: str) -> None:
    with pytest.raises(InvalidParameter) as ei:
        call()
    assert needle in str(ei.value) and "expected" in str(ei.value)


def test_crops_reproduce_golden_mmpose_heatmaps() -> None:
    """Crops made here, fed to the real pose model, give the heatmaps mmpose's crops gave.

    A half-input-pixel change of the convention makes the max difference ~0.1-0.2 on these
    (peak ~1) heatmaps; the same convention gives ~1e-3 (uint8 rounding inside the warp).
    """
    ort = pytest.importorskip("onnxruntime")
    golden = np.load(GOLDEN)
    ann = json.loads(KPT_ANN.read_text())
    by_id = {a["id"]: a for a in ann["annotations"]}
    files = {i["id"]: i["file_name"] for i in ann["images"]}
    sess = ort.InferenceSession(str(POSE_ONNX), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    spec = ModelSpec()
    worst = 0.0
    for n, aid in enumerate(golden["annotation_ids"][:10]):
        a = by_id[int(aid)]
        img = cv2.imread(str(IMAGES / files[a["image_id"]]))
        assert img is not None
        c, s = boxes_to_center_scale(xywh_to_xyxy([a["bbox"]]), spec.aspect_ratio)
        x = warp_crops(img, c, s, spec.input_size, spec)
        hm = sess.run(None, {name: x})[0]
        worst = max(worst, float(np.abs(hm[0] - golden["heatmaps"][n]).max()))
    assert worst < 0.01
