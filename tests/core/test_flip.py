"""Flip-test helpers: involutions, pair swapping, the 1-px shift, symmetric inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.flip import flip_batch, flip_heatmaps_back, flip_permutation, fuse_flip
from darkpose.service.core.types import COCO_FLIP_PAIRS

small = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def stacks(channels: int, max_h: int, max_w: int) -> st.SearchStrategy[np.ndarray]:
    """(N, ``channels``, H, W) float32 arrays of small values, N in 0..3, H and W from 1."""
    shape = st.tuples(
        st.integers(0, 3), st.just(channels), st.integers(1, max_h), st.integers(1, max_w)
    )
    return arrays(np.float32, shape, elements=small)


def gaussian(w: int, h: int, x: float, y: float, sigma: float = 2.0) -> np.ndarray:
    xs, ys = np.arange(w), np.arange(h)[:, None]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)).astype(np.float32)


def centroid_x(hm: np.ndarray) -> float:
    return float((hm * np.arange(hm.shape[-1])).sum() / hm.sum())


@settings(max_examples=50, deadline=None)
@given(stacks(3, 8, 9))
def test_flip_batch_twice_is_identity(batch: np.ndarray) -> None:
    once = flip_batch(batch)
    assert once.flags.c_contiguous and once.dtype == np.float32
    np.testing.assert_array_equal(once, batch[..., ::-1])
    np.testing.assert_array_equal(flip_batch(once), batch)


@settings(max_examples=50, deadline=None)
@given(stacks(17, 6, 7))
def test_flip_back_twice_without_shift_is_identity(hm: np.ndarray) -> None:
    once = flip_heatmaps_back(hm, COCO_FLIP_PAIRS, shift=False)
    np.testing.assert_array_equal(flip_heatmaps_back(once, COCO_FLIP_PAIRS, shift=False), hm)


def test_pairs_are_swapped_and_mirrored() -> None:
    rng = np.random.default_rng(0)
    hm = rng.random((2, 17, 8, 6), dtype=np.float32)
    out = flip_heatmaps_back(hm, COCO_FLIP_PAIRS, shift=False)
    for a, b in COCO_FLIP_PAIRS:
        np.testing.assert_array_equal(out[:, a], hm[:, b, :, ::-1])
        np.testing.assert_array_equal(out[:, b], hm[:, a, :, ::-1])
    np.testing.assert_array_equal(out[:, 0], hm[:, 0, :, ::-1])  # nose has no pair


def test_shift_moves_right_by_one_and_keeps_column_zero() -> None:
    rng = np.random.default_rng(1)
    hm = rng.random((1, 17, 5, 7), dtype=np.float32)
    plain = flip_heatmaps_back(hm, COCO_FLIP_PAIRS, shift=False)
    shifted = flip_heatmaps_back(hm, COCO_FLIP_PAIRS, shift=True)
    np.testing.assert_array_equal(shifted[..., 1:], plain[..., :-1])
    np.testing.assert_array_equal(shifted[..., 0], plain[..., 0])


def test_symmetric_heatmaps_are_a_fixed_point() -> None:
    """A left/right symmetric pose (mirror axis in the heatmap grid) flips back onto itself."""
    w, h = 48, 64
    hm = np.zeros((1, 17, h, w), np.float32)
    hm[0, 0] = gaussian(w, h, (w - 1) / 2, 10)
    for k, (a, b) in enumerate(COCO_FLIP_PAIRS):
        x = 10.0 + k
        hm[0, a] = gaussian(w, h, x, 20 + 4 * k)
        hm[0, b] = gaussian(w, h, w - 1 - x, 20 + 4 * k)
    back = flip_heatmaps_back(hm, COCO_FLIP_PAIRS, shift=False)
    np.testing.assert_allclose(back, hm, atol=1e-6)
    np.testing.assert_allclose(fuse_flip(hm, back), hm, atol=1e-6)


def test_shift_reduces_the_stride_offset() -> None:
    """Keypoint at heatmap x=u; the input mirror puts it at 47.75 - u (stride 4) in the flipped
    heatmap.  Flipped back without shift it lands at u - 0.75, with the shift at u + 0.25."""
    w, h, stride = 48, 64, 4
    u = 20.0
    hm_flip = np.zeros((1, 17, h, w), np.float32)
    hm_flip[0, 2] = gaussian(w, h, (w * stride - 1 - u * stride) / stride, 30)  # right channel
    plain = centroid_x(flip_heatmaps_back(hm_flip, COCO_FLIP_PAIRS, shift=False)[0, 1])
    shifted = centroid_x(flip_heatmaps_back(hm_flip, COCO_FLIP_PAIRS, shift=True)[0, 1])
    assert plain == pytest.approx(u - 0.75, abs=1e-3)
    assert shifted == pytest.approx(u + 0.25, abs=1e-3)


def test_fuse_flip_is_the_mean() -> None:
    a = np.full((1, 2, 3, 4), 1.0, np.float32)
    b = np.full((1, 2, 3, 4), 3.0, np.float32)
    out = fuse_flip(a, b)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 2.0)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: flip_batch(np.zeros((3, 4, 5))), "expected shape (N, C, H, W)"),
        (lambda: flip_heatmaps_back(np.zeros((17, 4, 5)), COCO_FLIP_PAIRS), "(N, K, H, W)"),
        (lambda: flip_heatmaps_back(np.zeros((1, 5, 4, 5)), COCO_FLIP_PAIRS), "in [0, 5)"),
        (lambda: flip_permutation(3, [(0, 1, 2)]), "expected (left, right) pairs"),
        (lambda: fuse_flip(np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 5))), "equal shapes"),
    ],
)
def test_errors(call: Any, needle: str) -> None:
    with pytest.raises(InvalidParameter) as ei:
        call()
    assert needle in str(ei.value) and "expected" in str(ei.value)
