"""darkpose.service.core.codec: parity with mmpose 1.3.2 (golden fixture + a per-instance loop
reimplementation), error handling, encode/decode round trips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.decode import make_batch, mmpose_decode_loop, mmpose_gaussian_blur
from darkpose.service.core import codec
from darkpose.service.core.codec import decode_heatmaps, encode_heatmaps, gaussian_blur_heatmaps
from darkpose.service.core.errors import InputError, InvalidParameter
from tests.conftest import GOLDEN

H, W = 64, 48


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        pytest.fail(f"expected the golden decode fixture at {GOLDEN}, got nothing there")
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _assert_close_to_reference(hm: np.ndarray, method: str, kernel: int = 11) -> None:
    """Our decode vs the mmpose-style loop.  Both are exact up to float rounding (mmpose works
    in float32, we in float64); the Newton step amplifies rounding by about the square of its
    length, so the budget is 1e-4 px * (1 + step^2)."""
    ours, scores = decode_heatmaps(hm, method, kernel)
    ref, ref_scores = mmpose_decode_loop(hm, method, kernel)
    base, _ = decode_heatmaps(hm, "argmax")
    step = np.abs(ref - base).max(axis=-1)
    err = np.abs(ours - ref).max(axis=-1)
    np.testing.assert_array_equal(scores, ref_scores)
    assert np.all(err <= 1e-4 * (1.0 + step**2)), f"max error {err.max()} px"


# ------------------------------------------------------------------------------------------
# parity with mmpose
# ------------------------------------------------------------------------------------------


def test_golden_dark_k11(golden: dict[str, np.ndarray]) -> None:
    coords, scores = decode_heatmaps(golden["heatmaps"], "dark", 11)
    assert coords.dtype == np.float32 and coords.shape == (32, 17, 2)
    assert np.abs(coords - golden["dark_k11"]).max() <= 1e-4
    np.testing.assert_array_equal(scores, golden["scores"])


def test_golden_standard(golden: dict[str, np.ndarray]) -> None:
    coords, scores = decode_heatmaps(golden["heatmaps"], "standard")
    assert np.abs(coords - golden["standard"]).max() <= 1e-4
    np.testing.assert_array_equal(scores, golden["scores"])


def test_golden_argmax_exact(golden: dict[str, np.ndarray]) -> None:
    coords, scores = decode_heatmaps(golden["heatmaps"], "argmax")
    # standard = argmax + {-0.25, 0, +0.25} per axis, so rounding it gives mmpose's argmax.
    np.testing.assert_array_equal(coords, np.round(golden["standard"]))
    ref, _ = mmpose_decode_loop(golden["heatmaps"], "argmax")
    np.testing.assert_array_equal(coords, ref)
    np.testing.assert_array_equal(scores, golden["scores"])


def test_reference_loop_matches_golden(golden: dict[str, np.ndarray]) -> None:
    """The bench's mmpose-style loop is itself checked against what mmpose produced."""
    dark, _ = mmpose_decode_loop(golden["heatmaps"], "dark", 11)
    std, _ = mmpose_decode_loop(golden["heatmaps"], "standard")
    assert np.abs(dark - golden["dark_k11"]).max() <= 1e-5
    np.testing.assert_array_equal(std, golden["standard"])


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 11, 17])
def test_dark_peaks_at_every_position(kernel: int) -> None:
    """A peak at every pixel (so every border / clamped-window case) plus noise."""
    rng = np.random.default_rng(kernel)
    ys, xs = np.mgrid[0:H:2, 0:W:2]
    n = ys.size
    kp = np.stack([xs.ravel(), ys.ravel()], -1)[:, None] + rng.uniform(-0.4, 0.4, (n, 1, 2))
    hm, _ = encode_heatmaps(kp, np.ones((n, 1)), (W, H), sigma=2.0)
    hm += rng.normal(0, 1e-3, hm.shape).astype(np.float32)
    _assert_close_to_reference(hm, "dark", kernel)


def test_dark_real_batch_matches_reference() -> None:
    _assert_close_to_reference(make_batch(24, seed=5), "dark", 11)


@pytest.mark.parametrize("shape", [(9, 7), (5, 5), (12, 30), (4, 6), (1, 1), (64, 3)])
@pytest.mark.parametrize("kernel", [3, 11, 31])
def test_small_maps_and_kernel_larger_than_map(shape: tuple[int, int], kernel: int) -> None:
    rng = np.random.default_rng(sum(shape) * kernel)
    hm = rng.random((6, 3, *shape)).astype(np.float32)
    _assert_close_to_reference(hm, "dark", kernel)
    _assert_close_to_reference(hm, "standard")


def test_exact_fallback_sharp_peaks_on_negative_background() -> None:
    """Where the 1e-10 clamp bites, the exact (full cv2 blur) fallback must agree."""
    rng = np.random.default_rng(7)
    hm = -np.abs(rng.normal(0, 1, (40, 3, 32, 32))).astype(np.float32)
    n, k = np.meshgrid(np.arange(40), np.arange(3), indexing="ij")
    hm[n, k, rng.integers(3, 29, (40, 3)), rng.integers(3, 29, (40, 3))] = rng.uniform(
        1e-6, 1, (40, 3)
    )
    _assert_close_to_reference(hm, "dark", 11)


def test_exact_fallback_for_every_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the fallback for all maps: it alone must reproduce mmpose too."""
    monkeypatch.setattr(codec, "_FAST_REL", 2.0)
    _assert_close_to_reference(make_batch(8, seed=2), "dark", 11)
    tiny = np.abs(np.random.default_rng(3).normal(0, 1, (10, 2, 20, 20))).astype(np.float32)
    _assert_close_to_reference(tiny * 1e-12, "dark", 11)


def test_standard_on_random_maps_matches_reference() -> None:
    rng = np.random.default_rng(11)
    hm = rng.normal(0, 1, (30, 5, 10, 8)).astype(np.float32)
    _assert_close_to_reference(hm, "standard")


@pytest.mark.parametrize("kernel", [1, 3, 5, 7, 9, 11, 17, 25])
def test_gaussian_blur_heatmaps_matches_mmpose_loop(kernel: int) -> None:
    hm = make_batch(2, seed=kernel)
    ref = mmpose_gaussian_blur(hm.reshape(-1, H, W).copy(), kernel).reshape(hm.shape)
    ours = gaussian_blur_heatmaps(hm, kernel)
    assert ours.shape == hm.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.max(axis=(2, 3)), hm.max(axis=(2, 3)), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# dtypes, layout, shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["argmax", "standard", "dark"])
def test_non_contiguous_input_equals_contiguous(method: str) -> None:
    hm = make_batch(6, seed=1)
    view = hm[::2, ::-1]
    assert not view.flags.c_contiguous
    a, sa = decode_heatmaps(view, method)
    b, sb = decode_heatmaps(np.ascontiguousarray(view), method)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("method", ["argmax", "standard", "dark"])
def test_other_float_dtypes(dtype: type, method: str) -> None:
    """float16 and float64 hold the same values as their float32 cast (the batch is made in
    float16 first), so the argmax is the same and the refinement agrees within rounding."""
    hm: np.ndarray = make_batch(4, seed=9).astype(np.float16).astype(dtype)
    coords, scores = decode_heatmaps(hm, method)
    assert coords.dtype == np.float32 and scores.dtype == np.float32
    ref, ref_scores = mmpose_decode_loop(hm.astype(np.float32), method)
    base, _ = decode_heatmaps(hm, "argmax")
    step = np.abs(ref - base).max(axis=-1)
    np.testing.assert_array_equal(scores, ref_scores)
    assert np.all(np.abs(coords - ref).max(axis=-1) <= 1e-4 * (1 + step**2))


@pytest.mark.parametrize("method", ["argmax", "standard", "dark"])
@pytest.mark.parametrize("shape", [(0, 17, 64, 48), (3, 0, 64, 48)])
def test_empty_batch(method: str, shape: tuple[int, ...]) -> None:
    coords, scores = decode_heatmaps(np.zeros(shape, np.float32), method)
    assert coords.shape == (*shape[:2], 2) and scores.shape == shape[:2]
    assert coords.dtype == np.float32 and scores.dtype == np.float32


def test_argmax_ties_take_first_and_nonpositive_maps_give_minus_one() -> None:
    hm = np.zeros((1, 3, 6, 5), np.float32)
    hm[0, 0, 2, 3] = hm[0, 0, 4, 1] = 1.0  # tie: first in row-major order wins
    hm[0, 1] = -1.0  # all negative
    coords, scores = decode_heatmaps(hm, "dark")
    np.testing.assert_array_equal(coords[0, 0], [3, 2])
    np.testing.assert_array_equal(coords[0, 1:], -1)
    np.testing.assert_array_equal(scores[0], [1.0, -1.0, 0.0])


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------

GOOD = np.zeros((1, 2, 8, 8), np.float32)


def _with(value: float, pos: tuple[int, ...]) -> np.ndarray:
    hm = np.random.default_rng(0).random((3, 4, 16, 12)).astype(np.float32)
    hm[pos] = value
    return hm


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"heatmaps": np.zeros((2, 8, 8), np.float32)}, InputError, "4-D"),
        ({"heatmaps": np.zeros((1, 1, 2, 8, 8), np.float32)}, InputError, "4-D"),
        ({"heatmaps": np.zeros((1, 2, 8, 8), np.int32)}, InputError, "int32"),
        ({"heatmaps": np.zeros((1, 2, 0, 8), np.float32)}, InputError, "non-empty"),
        ({"method": "soft-argmax"}, InvalidParameter, "soft-argmax"),
        ({"method": "DARK"}, InvalidParameter, "expected one of"),
        ({"blur_kernel": 10}, InvalidParameter, "got 10"),
        ({"blur_kernel": 0}, InvalidParameter, "got 0"),
        ({"blur_kernel": -3}, InvalidParameter, "got -3"),
        ({"blur_kernel": 3.0}, InvalidParameter, "float"),
        ({"blur_kernel": True}, InvalidParameter, "bool"),
        ({"heatmaps": _with(np.nan, (0, 0, 0, 0))}, InputError, "nan"),
        ({"heatmaps": _with(np.nan, (2, 3, 15, 11))}, InputError, "(2, 3, 15, 11)"),
        ({"heatmaps": _with(np.inf, (1, 2, 7, 5))}, InputError, "inf"),
        ({"heatmaps": _with(-np.inf, (1, 2, 7, 5))}, InputError, "-inf"),
        ({"heatmaps": _with(-np.inf, (2, 3, 15, 11))}, InputError, "(2, 3, 15, 11)"),
    ],
)
@pytest.mark.parametrize("method", ["argmax", "standard", "dark"])
def test_errors(kwargs: dict[str, Any], error: type[Exception], fragment: str, method: str) -> None:
    args: dict[str, Any] = {"heatmaps": GOOD, "method": method, "blur_kernel": 11} | kwargs
    with pytest.raises(error) as info:
        decode_heatmaps(**args)
    assert "expected" in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_other_dtypes(dtype: type, value: float) -> None:
    hm: np.ndarray = _with(value, (1, 1, 3, 3)).astype(dtype)
    with pytest.raises(InputError, match="expected finite"):
        decode_heatmaps(hm)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, -np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("pos", [(0, 0, 0, 0), (2, 3, 15, 11), (1, 2, 7, 5)])
def test_non_finite_of_either_sign_anywhere(
    dtype: type, value: float, pos: tuple[int, ...]
) -> None:
    """The check works on the bit patterns (integer max/argmax): NaNs with the sign bit set
    and -inf are the largest unsigned patterns, +inf/+NaN the largest signed ones."""
    hm: np.ndarray = _with(0.5, (0, 0, 0, 0)).astype(dtype)
    hm[pos] = value
    assert np.signbit(hm[pos]) == np.signbit(value)
    for method in ("argmax", "dark"):
        with pytest.raises(InputError, match="expected finite"):
            decode_heatmaps(hm, method)


@pytest.mark.parametrize("method", ["argmax", "standard", "dark"])
def test_big_endian_input_equals_native(method: str) -> None:
    hm = make_batch(2)
    hm[0, 3] -= 1.0  # a map with maximum <= 0
    swapped = hm.astype(hm.dtype.newbyteorder(">"))
    for a, b in zip(decode_heatmaps(swapped, method), decode_heatmaps(hm, method), strict=True):
        np.testing.assert_array_equal(a, b)
    swapped[1, 2, 5, 7] = -np.inf
    with pytest.raises(InputError, match="expected finite"):
        decode_heatmaps(swapped, method)


#: (bits, mantissa bits) per dtype.
_NONFINITE_BITS: dict[type, tuple[int, int]] = {
    np.float16: (16, 10),
    np.float32: (32, 23),
    np.float64: (64, 52),
}


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    sign=st.booleans(),
    payload=st.integers(min_value=0, max_value=2**52 - 1),
    pos=st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 15), st.integers(0, 11)),
    offset=st.floats(-2.0, 0.5),
)
def test_any_non_finite_bit_pattern_raises(
    dtype: type, sign: bool, payload: int, pos: tuple[int, ...], offset: float
) -> None:
    """Every pattern with an all-ones exponent (+-inf, NaNs of either sign and any payload),
    anywhere, in maps with or without positive values."""
    bits, mant = _NONFINITE_BITS[dtype]
    pattern = (int(sign) << (bits - 1)) | (((1 << (bits - 1 - mant)) - 1) << mant)
    pattern |= payload & ((1 << mant) - 1)
    hm: np.ndarray = (_with(0.25, (0, 0, 0, 0)) + offset).astype(dtype)
    hm.view(f"u{bits // 8}")[pos] = pattern
    assert not np.isfinite(hm[pos])
    with pytest.raises(InputError, match="expected finite"):
        decode_heatmaps(hm, "dark")


@settings(max_examples=80, deadline=None)
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    data=st.lists(
        st.sampled_from([-2.0, -1.0, -0.0, 0.0, 1e-30, 0.5, 1.0, 2.0]), min_size=60, max_size=60
    ),
)
def test_argmax_equals_float_argmax_with_ties_zeros_and_signs(
    dtype: type, data: list[float]
) -> None:
    """The integer-view argmax (+ float redo where the maximum is <= 0) is the float argmax:
    first maximum, -0.0 == 0.0, across dtypes."""
    hm: np.ndarray = np.asarray(data, dtype).reshape(1, 5, 3, 4)
    coords, scores = decode_heatmaps(hm, "argmax")
    flat = hm.reshape(5, 12)
    first = flat.argmax(axis=1)
    vals = flat[np.arange(5), first]
    np.testing.assert_array_equal(scores[0], vals.astype(np.float32))
    expect = np.stack((first % 4, first // 4), axis=-1).astype(np.float32)
    expect[vals <= 0] = -1
    np.testing.assert_array_equal(coords[0], expect)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nonpositive_maps_take_the_float_argmax(dtype: type) -> None:
    """Maps with maximum <= 0 (where the integer-view argmax is wrong) get the float one:
    first maximum, -0.0 == 0.0."""
    hm: np.ndarray = np.full((1, 4, 5, 6), -3.0, dtype)
    hm[0, 0, 1, 2] = -1.0
    hm[0, 0, 3, 4] = -2.0
    hm[0, 1, 2, 2] = -0.0
    hm[0, 1, 4, 1] = 0.0
    hm[0, 2, 0, 5] = 0.0
    hm[0, 2, 1, 0] = -0.0
    hm[0, 3, 4, 5] = 0.5
    coords, scores = decode_heatmaps(hm, "argmax")
    ref, ref_scores = mmpose_decode_loop(hm.astype(np.float32), "argmax")
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(coords, ref)
    flat = hm.reshape(4, -1)
    np.testing.assert_array_equal(
        scores[0], flat[np.arange(4), flat.argmax(axis=1)].astype(np.float32)
    )
    np.testing.assert_array_equal(coords[0, 3], [5, 4])


def test_large_finite_values_are_accepted() -> None:
    hm = np.full((1, 1, 8, 8), 3e38, np.float32)
    hm[0, 0, 4, 4] = 3.4e38
    coords, scores = decode_heatmaps(hm)
    assert np.isfinite(coords).all() and scores[0, 0] == np.float32(3.4e38)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: encode_heatmaps(np.zeros((2, 3)), np.ones((2,))), InputError),
        (lambda: encode_heatmaps(np.zeros((1, 2, 2)), np.ones((1, 3))), InputError),
        (lambda: encode_heatmaps(np.full((1, 1, 2), np.nan), np.ones((1, 1))), InputError),
        (lambda: encode_heatmaps(np.zeros((1, 1, 2)), np.ones((1, 1)), (0, 4)), InvalidParameter),
        (
            lambda: encode_heatmaps(np.zeros((1, 1, 2)), np.ones((1, 1)), sigma=0.0),
            InvalidParameter,
        ),
        (lambda: gaussian_blur_heatmaps(np.zeros((4, 4), np.float32), 4), InvalidParameter),
        (lambda: gaussian_blur_heatmaps(np.zeros((4,), np.float32), 3), InputError),
    ],
)
def test_encode_and_blur_errors(call: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error, match="expected"):
        call()


# ------------------------------------------------------------------------------------------
# encoding
# ------------------------------------------------------------------------------------------


def _encode_loop(
    kp: np.ndarray, vis: np.ndarray, sigma: float, unbiased: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-keypoint mmpose MSRAHeatmap target (generate_(unbiased_)gaussian_heatmaps)."""
    N, K = kp.shape[:2]
    out = np.zeros((N, K, H, W), np.float32)
    weights = np.where(vis >= 0.5, vis, 0).astype(np.float32)
    radius = sigma * 3
    for n in range(N):
        for k in range(K):
            if vis[n, k] < 0.5:
                continue
            if unbiased:
                mu = kp[n, k]
                left, top = mu - radius
                right, bottom = mu + radius + 1
                if left >= W or top >= H or right < 0 or bottom < 0:
                    weights[n, k] = 0
                    continue
                x = np.arange(W)[None, :]
                y = np.arange(H)[:, None]
                out[n, k] = np.exp(-((x - mu[0]) ** 2 + (y - mu[1]) ** 2) / (2 * sigma**2))
            else:
                size = 2 * radius + 1
                g = np.arange(0, size, 1, dtype=np.float32)
                x0 = y0 = size // 2
                gauss = np.exp(-((g[None] - x0) ** 2 + (g[:, None] - y0) ** 2) / (2 * sigma**2))
                mu = (kp[n, k] + 0.5).astype(np.int64)
                left, top = (mu - radius).astype(np.int64)
                right, bottom = (mu + radius + 1).astype(np.int64)
                if left >= W or top >= H or right < 0 or bottom < 0:
                    weights[n, k] = 0
                    continue
                gx = (max(0, -left), min(right, W) - left)
                gy = (max(0, -top), min(bottom, H) - top)
                out[n, k, max(0, top) : min(bottom, H), max(0, left) : min(right, W)] = gauss[
                    gy[0] : gy[1], gx[0] : gx[1]
                ]
    return out, weights


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_encode_matches_mmpose_loop(unbiased: bool, sigma: float) -> None:
    rng = np.random.default_rng(int(sigma * 10))
    kp = rng.uniform(-12, 60, (6, 17, 2))
    vis = rng.random((6, 17)) > 0.2
    hm, weights = encode_heatmaps(kp, vis, (W, H), sigma, unbiased)
    ref, ref_weights = _encode_loop(kp, vis, sigma, unbiased)
    assert hm.shape == (6, 17, H, W) and hm.dtype == np.float32 and weights.dtype == np.float32
    np.testing.assert_allclose(hm, ref, atol=1e-6)
    np.testing.assert_array_equal(weights, ref_weights)
    assert not hm[weights == 0].any()


@pytest.mark.parametrize(
    ("x", "y", "inside"),
    [
        (-7.01, 10.0, False),  # mu + 3 sigma + 1 < 0
        (-6.99, 10.0, True),
        (10.0, -7.01, False),
        (W + 6.0, 10.0, False),  # mu - 3 sigma >= W
        (W + 5.99, 10.0, True),
        (10.0, H + 6.0, False),
        (20.0, 30.0, True),
    ],
)
def test_encode_out_of_map_rule(x: float, y: float, inside: bool) -> None:
    hm, w = encode_heatmaps(np.array([[[x, y]]]), np.ones((1, 1)), (W, H), 2.0, True)
    assert bool(w[0, 0] == 1.0) is inside
    if not inside:
        assert not hm.any()


def test_encode_invisible_gets_zero_weight_and_map() -> None:
    hm, w = encode_heatmaps(np.full((2, 2, 2), 20.0), [[1, 0], [0.4, 0.6]], (W, H))
    np.testing.assert_array_equal(w, np.array([[1, 0], [0, 0.6]], np.float32))
    assert not hm[0, 1].any() and not hm[1, 0].any() and hm[1, 1].max() > 0.5


def test_biased_target_centred_at_rounded_location() -> None:
    kp = np.array([[[10.49, 20.5], [10.51, 20.49]]])
    hm, _ = encode_heatmaps(kp, np.ones((1, 2)), (W, H), 2.0, unbiased=False)
    coords, scores = decode_heatmaps(hm, "argmax")
    np.testing.assert_array_equal(coords[0], [[10, 21], [11, 20]])
    np.testing.assert_array_equal(scores, 1.0)


# ------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sigma=st.floats(1.5, 3.0),
    fx=st.floats(0.0, 1.0),
    fy=st.floats(0.0, 1.0),
    n=st.integers(1, 4),
)
def test_unbiased_encode_dark_decode_recovers_subpixel(
    sigma: float, fx: float, fy: float, n: int
) -> None:
    margin = int(np.ceil(3 * sigma)) + 2
    x = margin + fx * (W - 1 - 2 * margin)
    y = margin + fy * (H - 1 - 2 * margin)
    kp = np.tile([[[x, y]]], (n, 2, 1)) + np.array([0.0, 0.37])[None, :, None]
    hm, _ = encode_heatmaps(kp, np.ones((n, 2)), (W, H), sigma, unbiased=True)
    coords, scores = decode_heatmaps(hm, "dark", 11)
    assert np.abs(coords - kp).max() <= 0.05
    assert np.all(scores > 0.8)


def test_biased_standard_is_measurably_worse_than_unbiased_dark() -> None:
    rng = np.random.default_rng(0)
    kp = np.stack([rng.uniform(10, W - 11, 300), rng.uniform(10, H - 11, 300)], -1)[:, None]
    vis = np.ones((300, 1))
    unb, _ = encode_heatmaps(kp, vis, (W, H), 2.0, unbiased=True)
    bia, _ = encode_heatmaps(kp, vis, (W, H), 2.0, unbiased=False)
    err_dark = np.linalg.norm(decode_heatmaps(unb, "dark")[0] - kp, axis=-1).mean()
    err_std = np.linalg.norm(decode_heatmaps(bia, "standard")[0] - kp, axis=-1).mean()
    assert err_dark < 0.01
    assert err_std > 0.2 and err_std > 20 * err_dark


def _degenerate_maps(kind: str, value: float, x: int, y: int) -> np.ndarray:
    hm = np.zeros((1, 1, 16, 12), np.float32)
    if kind == "flat":
        hm[:] = value
    elif kind == "negative":
        hm[:] = -abs(value)
        hm[0, 0, y, x] = -abs(value) / 2
    elif kind == "peak":
        hm[0, 0, y, x] = abs(value)
    return hm


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(["flat", "zero", "negative", "peak"]),
    value=st.floats(1e-30, 1e30),
    x=st.sampled_from([0, 1, 2, 9, 10, 11]),
    y=st.sampled_from([0, 1, 2, 13, 14, 15]),
    method=st.sampled_from(["argmax", "standard", "dark"]),
    kernel=st.sampled_from([1, 3, 11]),
)
def test_degenerate_maps_never_give_nan(
    kind: str, value: float, x: int, y: int, method: str, kernel: int
) -> None:
    hm = _degenerate_maps(kind, value, x, y)
    coords, scores = decode_heatmaps(hm, method, kernel)
    assert np.isfinite(coords).all() and np.isfinite(scores).all()
    if kind in ("zero", "negative"):
        np.testing.assert_array_equal(coords, -1)
    if kind == "peak":  # a single peak on/near the border is never moved off its pixel
        assert np.abs(coords[0, 0] - [x, y]).max() < 1.0


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.floats(-1e3, 1e3, width=32), min_size=5 * 7 * 2, max_size=5 * 7 * 2),
    kernel=st.sampled_from([1, 3, 5, 11]),
)
def test_random_finite_maps_give_finite_output(data: list[float], kernel: int) -> None:
    hm = np.array(data, np.float32).reshape(2, 1, 5, 7)
    for method in ("argmax", "standard", "dark"):
        coords, scores = decode_heatmaps(hm, method, kernel)
        assert np.isfinite(coords).all()
        np.testing.assert_array_equal(scores[:, 0], hm.reshape(2, -1).max(-1))
