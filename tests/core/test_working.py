"""Working resolution: decode_working on real encoded files, the coordinate mapping back."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from darkpose.service.core.errors import InvalidImage, PayloadTooLarge
from darkpose.service.core.io import decode_image, decode_working
from darkpose.service.core.pipeline import Person, PoseResult, to_original
from darkpose.service.core.working import to_original_xy, working_size

W, H = 2400, 1600  # a photo larger than the working side used here
SIDE = 600


def photo(fmt: str, orientation: int = 1, dot: tuple[int, int] = (1700, 400)) -> bytes:
    """A smooth grey photo with a bright 24×24 square centred on ``dot`` (x, y), as stored."""
    yy, xx = np.mgrid[0:H, 0:W]
    a = np.stack([(xx * 60 // W), (yy * 60 // H), np.full_like(xx, 40)], -1).astype(np.uint8)
    x, y = dot
    a[y - 12 : y + 12, x - 12 : x + 12] = 250
    im = Image.fromarray(a)
    buf = io.BytesIO()
    kw: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def bright_centre(image: np.ndarray) -> tuple[float, float]:
    """(x, y) centroid of the bright square (pixel centres at integers)."""
    mask = image.min(axis=2) > 150
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


@given(
    st.floats(-10, 5000, allow_nan=False),
    st.floats(1.0, 16.0, allow_nan=False),
)
def test_to_original_inverts_the_area_reduction(x: float, s: float) -> None:
    u = (x + 0.5) / s - 0.5  # where an INTER_AREA / DCT reduction by s puts original x
    back = to_original_xy(np.array([[u, u]], np.float32), (s, s))
    assert np.allclose(back, [[x, x]], atol=1e-3 * max(1.0, abs(x)))


@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(0, 5000))
def test_working_size_keeps_the_aspect_and_caps_the_longest_side(w: int, h: int, s: int) -> None:
    size = working_size(w, h, s)
    if s == 0 or max(w, h) <= s:
        assert size is None
        return
    assert size is not None
    assert max(size) == s
    assert min(size) >= 1
    k = s / max(w, h)
    for got, side in zip(size, (w, h), strict=True):  # each side rounded, at least 1 px
        assert abs(got - side * k) <= 0.5 + 1e-9 or (got == 1 and side * k < 1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_working_image_has_the_working_side_and_maps_back(fmt: str) -> None:
    data = photo(fmt)
    seen: list[tuple[int, int]] = []
    decoded = decode_working(data, working_side=SIDE, on_header=lambda w, h, m: seen.append((w, h)))
    assert decoded.image.shape == (400, 600, 3)
    assert decoded.original_size == (W, H)
    assert decoded.scale == (4.0, 4.0)
    # the decoder holds a DCT-scaled JPEG (≥ the working side), the full size otherwise
    assert seen == ([(W // 4, H // 4)] if fmt == "JPEG" else [(W, H)])
    u, v = bright_centre(decoded.image)
    x, y = to_original_xy(np.array([u, v], np.float32), decoded.scale)
    fx, fy = bright_centre(decode_image(data))
    assert abs(x - fx) < 1.0 and abs(y - fy) < 1.0


def test_small_images_and_side_zero_are_full_resolution() -> None:
    data = photo("JPEG")
    full = decode_image(data)
    for side in (0, W, W + 1):
        d = decode_working(data, working_side=side)
        assert d.scale == (1.0, 1.0)
        assert np.array_equal(d.image, full)


def test_limits_apply_to_the_declared_full_size() -> None:
    data = photo("JPEG")
    with pytest.raises(PayloadTooLarge, match=f"{W}x{H} = {W * H} pixels"):
        decode_working(data, working_side=SIDE, max_pixels=W * H - 1)
    with pytest.raises(PayloadTooLarge, match=f"expected at most {W - 1} px per side"):
        decode_working(data, working_side=SIDE, max_side=W - 1)


def test_truncated_jpeg_is_still_refused_when_scaled() -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    ok, enc = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    data = enc.tobytes()
    cut = data[: len(data) // 2] + b"\xff\xd9"
    with pytest.raises(InvalidImage):
        decode_working(cut, working_side=SIDE)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applies_at_working_resolution(orientation: int) -> None:
    data = photo("JPEG", orientation)
    full = decode_image(data)
    d = decode_working(data, working_side=SIDE)
    fh, fw = full.shape[:2]
    assert d.original_size == (fw, fh)
    assert max(d.image.shape[:2]) == SIDE
    assert d.image.shape[0] > d.image.shape[1] if orientation in (6, 8) else True
    u, v = bright_centre(d.image)
    x, y = to_original_xy(np.array([u, v], np.float32), d.scale)
    fx, fy = bright_centre(full)
    assert abs(x - fx) < 1.0 and abs(y - fy) < 1.0


def test_to_original_maps_keypoints_and_boxes_once() -> None:
    kp = np.array([[10.0, 20.0, 0.9], [0.0, 0.0, 0.5]], np.float32)
    person = Person(np.array([0, 0, 100, 50], np.float32), 0.8, kp, 0.7)
    result = PoseResult.from_persons([person], image_size=(150, 100), timings={"total": 1.0})
    out = to_original(result, (4.0, 2.0), (600, 200))
    assert out.image_size == (600, 200)
    p = out.persons[0]
    assert np.allclose(p.keypoints[:, :2], [[41.5, 40.5], [1.5, 0.5]])
    assert np.allclose(p.keypoints[:, 2], kp[:, 2])  # scores untouched
    assert np.allclose(p.bbox, [1.5, 0.5, 401.5, 100.5])
    assert np.array_equal(result.persons[0].keypoints, kp)  # the input is not modified
    same = to_original(result, (1.0, 1.0), (150, 100))
    assert same.keypoints is result.keypoints and same.boxes is result.boxes  # no copy


@pytest.mark.parametrize(("fmt", "shape"), [("JPEG", (800, 1200, 3)), ("PNG", (467, 700, 3))])
def test_jpeg_keeps_its_dct_size_others_get_the_working_side(
    fmt: str, shape: tuple[int, int, int]
) -> None:
    """Side 700: a JPEG is used at its smallest DCT scale with ≥ 700 px (1/2: 1200), a PNG is
    reduced to exactly 700."""
    d = decode_working(photo(fmt), working_side=700)
    assert d.image.shape == shape
    assert d.original_size == (W, H)
