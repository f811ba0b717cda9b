"""The torch DARK decode (the one exported into ONNX graphs) against mmpose and the codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.models.dark import DarkDecode, gaussian_taps
from tests.conftest import GOLDEN


def decode(hm: np.ndarray, kernel: int = 11) -> np.ndarray:
    with torch.no_grad():
        return DarkDecode(hm.shape[1], kernel)(torch.from_numpy(hm)).numpy()


def test_matches_mmpose_golden() -> None:
    g = np.load(GOLDEN)
    out = decode(g["heatmaps"])
    assert out.shape == (32, 17, 3)
    assert np.abs(out[..., :2] - g["dark_k11"]).max() <= 1e-4
    assert np.array_equal(out[..., 2], g["scores"])


def test_matches_the_numpy_codec() -> None:
    codec = pytest.importorskip("darkpose.service.core.codec")
    g = np.load(GOLDEN)
    rng = np.random.default_rng(0)
    hm = np.concatenate([g["heatmaps"], rng.random((4, 17, 64, 48), dtype=np.float32)])
    coords, scores = codec.decode_heatmaps(hm, method="dark", blur_kernel=11)
    out = decode(hm)
    peaked = slice(0, 32)
    assert np.abs(out[peaked, :, :2] - coords[peaked]).max() <= 1e-3
    assert np.allclose(out[..., 2], scores)
    # uniform noise: Newton steps on noise can be many px long; agree relative to the step
    flat = hm[32:].reshape(4, 17, -1).argmax(-1)
    integer = np.stack([flat % 48, flat // 48], -1).astype(np.float32)
    step = np.abs(coords[32:] - integer)
    assert np.all(np.abs(out[32:, :, :2] - coords[32:]) <= 1e-3 + 1e-2 * step)


def test_taps_are_cv2_gaussian_blur_taps() -> None:
    taps = gaussian_taps(11)
    assert taps.shape == (11,) and taps.sum() == pytest.approx(1.0, abs=1e-6)
    assert taps[5] == pytest.approx(0.20056541, abs=1e-7)  # sigma = 0.3*((11-1)/2 - 1) + 0.8 = 2
    with pytest.raises(ValueError, match="positive odd"):
        gaussian_taps(4)


@settings(max_examples=40, deadline=None)
@given(
    cx=st.floats(6.0, 17.0),  # away from the zero-padded border (truncation bias)
    cy=st.floats(6.0, 25.0),
    sigma=st.floats(1.5, 3.0),
    amp=st.floats(0.2, 1.0),
)
def test_recovers_subpixel_gaussian_centre(cx: float, cy: float, sigma: float, amp: float) -> None:
    """log of a (blurred) Gaussian is quadratic: the Newton step lands on the true centre."""
    yy, xx = np.mgrid[0:32, 0:24]
    hm = (amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))).astype(np.float32)
    out = decode(hm[None, None])[0, 0]
    assert abs(out[0] - cx) < 0.05 and abs(out[1] - cy) < 0.05
    assert out[2] == pytest.approx(hm.max())


@pytest.mark.parametrize(
    ("x", "y", "refined"),
    [
        (1, 10, False),
        (2, 10, True),
        (21, 10, True),
        (22, 10, False),
        (10, 1, False),
        (10, 29, True),
    ],
)
def test_border_rule(x: int, y: int, refined: bool) -> None:
    """mmpose refines only when 1 < x < W-2 and 1 < y < H-2 (W=24, H=32)."""
    yy, xx = np.mgrid[0:32, 0:24]
    hm = np.exp(-((xx - x - 0.3) ** 2 + (yy - y - 0.2) ** 2) / 8.0).astype(np.float32)
    hm[y, x] += 0.5  # make the integer maximum unambiguous
    out = decode(hm[None, None])[0, 0]
    moved = not (out[0] == x and out[1] == y)
    assert moved == refined


def test_non_positive_maximum_gives_minus_one() -> None:
    hm = -np.ones((2, 3, 16, 12), np.float32)
    hm[1] = 0.0
    out = decode(hm)
    assert np.all(out[..., :2] == -1.0)
    assert np.all(out[0, :, 2] == -1.0) and np.all(out[1, :, 2] == 0.0)


def test_moves_to_another_device() -> None:
    """``.to(device)`` moves every tensor the forward uses (the meta device stands in for a
    GPU); the state dict stays the two blur tap buffers."""
    decoder = DarkDecode(17).to("meta")
    out = decoder(torch.rand(2, 17, 64, 48, device="meta"))
    assert out.shape == (2, 17, 3) and out.device.type == "meta"
    assert list(decoder.state_dict()) == ["taps_x", "taps_y"]
