"""Structural checks before decoding (service/core/imageguard.py) and memory-lean conversion."""

from __future__ import annotations

import contextlib
import io
import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from darkpose.service.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from darkpose.service.core.imageguard import (
    check_bmp,
    check_jpeg,
    check_png,
    jpeg_tail_is_fill,
    jpeg_with_probe,
)
from darkpose.service.core.io import decode_image
from tests import hostile_payloads as hp
from tests.conftest import IMAGES

CROWD = (IMAGES / "000000129648.jpg").read_bytes()


def _jpeg(img: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_real_jpegs_pass_the_marker_walk() -> None:
    for path in sorted(IMAGES.glob("*.jpg"))[:20]:
        info = check_jpeg(path.read_bytes())
        assert info.scans >= 1 and info.width > 0 and info.eoi > 0


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_encoder_output_passes(progressive: bool, subsampling: int) -> None:
    img = np.random.default_rng(0).integers(0, 256, (67, 93, 3), dtype=np.uint8)
    data = _jpeg(img, progressive=progressive, subsampling=subsampling)
    info = check_jpeg(data)
    assert info.progressive is progressive
    assert decode_image(data).shape == (67, 93, 3)


def test_scan_limit() -> None:
    bomb = hp.jpeg_scan_bomb(256, 150)
    with pytest.raises(PayloadTooLarge, match="expected at most 100"):
        check_jpeg(bomb, max_scans=100)
    assert check_jpeg(bomb, max_scans=200).scans == 151


def test_declared_size_needs_scan_bytes() -> None:
    with pytest.raises(InvalidImage, match="expected at least"):
        check_jpeg(hp.jpeg_header_only(6324))
    with pytest.raises(InvalidImage, match="no frame header"):
        check_jpeg(b"\xff\xd8\xff\xd9")


def test_truncated_jpeg_with_eoi_is_invalid_but_a_grey_corner_is_not() -> None:
    with pytest.raises(InvalidImage, match="ends before the image"):
        decode_image(hp.truncated_jpeg_with_eoi(CROWD, 0.6))
    bgr = cv2.imdecode(np.frombuffer(CROWD, np.uint8), cv2.IMREAD_COLOR)
    bgr[-40:, -64:] = 128  # a real grey corner: probed, then accepted
    ok, enc = cv2.imencode(".jpg", bgr)
    assert ok
    out = decode_image(enc.tobytes())
    assert jpeg_tail_is_fill(out)
    flat = _jpeg(np.full((64, 64, 3), 128, np.uint8))
    assert decode_image(flat).shape == (64, 64, 3)


def test_probe_leaves_complete_jpegs_unchanged() -> None:
    info = check_jpeg(CROWD)
    a = cv2.imdecode(np.frombuffer(CROWD, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(jpeg_with_probe(CROWD, info.eoi), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(a, b)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_marker_walk_never_crashes(tail: bytes) -> None:
    with contextlib.suppress(InvalidImage, PayloadTooLarge):
        check_jpeg(b"\xff\xd8" + tail)


def test_png_chunk_limit() -> None:
    data = hp.png_many_chunks(3000)
    assert check_png(data, max_chunks=5000) == 3002
    with pytest.raises(PayloadTooLarge, match="more than 1000 chunks"):
        check_png(data, max_chunks=1000)


def test_bmp_checks() -> None:
    with pytest.raises(InvalidImage, match="got -64"):
        check_bmp(hp.bmp_negative_width())
    with pytest.raises(UnsupportedMediaType, match="RLE8"):
        decode_image(hp.bmp_rle8(64))
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "BMP")
    check_bmp(buf.getvalue())


def test_sixteen_bit_decoding_is_memory_lean() -> None:
    side = 2100  # above pixels.LEAN_ABOVE_PIXELS (smaller images take the np.asarray path)
    data = hp.png16_gray(side)
    tracemalloc.start()
    try:
        out = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (side, side, 3)
    # the BGR result (3 B/px) + the 16-bit copy (2 B/px) + the high bytes (1 B/px); the int64
    # conversion held 2-3 arrays of 8 B/px on top
    assert peak < 7 * side * side, peak


def test_sixteen_bit_values_keep_the_high_byte() -> None:
    arr = np.array([[0, 255, 256, 65535, 4660]], np.uint16).repeat(8, 0).repeat(2, 1)
    ok, enc = cv2.imencode(".png", arr)
    assert ok
    out = decode_image(enc.tobytes())
    assert out[0, ::2, 0].tolist() == [0, 0, 1, 255, 0x12]
