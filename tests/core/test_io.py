"""decode_image / read_image_file on real encoded files made here with PIL, cv2 and zlib."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFile, ImageOps

from darkpose.service.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from darkpose.service.core.io import decode_image, read_image_file, sniff_format
from tests.conftest import IMAGES

ACCEPTED = "JPEG/PNG/WebP/BMP"


# ---- builders ------------------------------------------------------------------------------
def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """RGB uint8 (h, w, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth(h: int = 96, w: int = 128) -> np.ndarray:
    """RGB uint8 gradient (compresses into a multi-scan JPEG body)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@cache
def png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A valid 1-bit grayscale all-zero PNG of w x h: tens of KB on disk, w*h pixels."""
    row = b"\x00" * (1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 500) for _ in range(h // 500)]
    parts.append(comp.compress(row * (h % 500)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def png_header_only(w: int, h: int) -> bytes:
    """IHDR + IEND, no pixel data: decoding it would fail, so refusing it proves the size
    check happened on the header alone."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def frames() -> list[Image.Image]:
    return [Image.fromarray(noise(32, 32, s)) for s in range(3)]


def truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(smooth()), "JPEG", quality=95)
    return data[: int(len(data) * 0.7)]


def truncated_png() -> bytes:
    data = encode(Image.fromarray(noise(64, 64)), "PNG")
    return data[: len(data) - 200]


def corrupt_png_idat() -> bytes:
    data = bytearray(encode(Image.fromarray(noise(64, 64)), "PNG"))
    i = data.index(b"IDAT") + 40
    data[i : i + 16] = b"\xff" * 16
    return bytes(data)


def bmp_huge_header() -> bytes:
    data = bytearray(encode(Image.fromarray(noise(16, 16)), "BMP"))
    data[18:26] = struct.pack("<ii", 30000, 30000)
    return bytes(data)


# ---- bad inputs: error type and a message that says what is accepted ---------------------
BAD: list[tuple[str, Callable[[], bytes], type[Exception], str, dict[str, int]]] = [
    ("empty", lambda: b"", InvalidImage, ACCEPTED, {}),
    (
        "too-many-bytes",
        lambda: b"\xff\xd8\xff" + b"\x00" * 5000,
        PayloadTooLarge,
        "expected at most 4096 bytes",
        {"max_bytes": 4096},
    ),
    ("random-bytes", lambda: np.random.default_rng(5).bytes(4000), InvalidImage, ACCEPTED, {}),
    ("text", lambda: b"hello, this is not an image\n" * 10, InvalidImage, ACCEPTED, {}),
    ("json", lambda: b'{"image": "data:image/png;base64,..."}', InvalidImage, ACCEPTED, {}),
    ("gif", lambda: encode(frames()[0], "GIF"), UnsupportedMediaType, ACCEPTED, {}),
    (
        "animated-gif",
        lambda: encode(frames()[0], "GIF", save_all=True, append_images=frames()[1:]),
        UnsupportedMediaType,
        ACCEPTED,
        {},
    ),
    (
        "animated-webp",
        lambda: encode(frames()[0], "WEBP", save_all=True, append_images=frames()[1:]),
        UnsupportedMediaType,
        ACCEPTED,
        {},
    ),
    (
        "animated-png",
        lambda: encode(frames()[0], "PNG", save_all=True, append_images=frames()[1:]),
        UnsupportedMediaType,
        ACCEPTED,
        {},
    ),
    ("tiff", lambda: encode(frames()[0], "TIFF"), UnsupportedMediaType, ACCEPTED, {}),
    ("pdf", lambda: b"%PDF-1.4\n" + b"0" * 100, UnsupportedMediaType, ACCEPTED, {}),
    (
        "heic",
        lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100,
        UnsupportedMediaType,
        ACCEPTED,
        {},
    ),
    ("truncated-jpeg", truncated_jpeg, InvalidImage, ACCEPTED, {}),
    ("truncated-png", truncated_png, InvalidImage, ACCEPTED, {}),
    ("corrupt-png-idat", corrupt_png_idat, InvalidImage, ACCEPTED, {}),
    (
        "png-magic-garbage",
        lambda: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
        InvalidImage,
        ACCEPTED,
        {},
    ),
    (
        "jpeg-magic-garbage",
        lambda: b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x01" * 50,
        InvalidImage,
        ACCEPTED,
        {},
    ),
    (
        "png-bomb-20000x20000",
        png_bomb,
        PayloadTooLarge,
        "has 400000000 pixels; expected at most",
        {},
    ),
    (
        "png-bomb-under-pil-limit",
        lambda: png_bomb(9000, 9000),
        PayloadTooLarge,
        "expected at most 40000000 pixels",
        {},
    ),
    (
        "header-only-8000x8000",
        lambda: png_header_only(8000, 8000),
        PayloadTooLarge,
        "expected at most 40000000 pixels",
        {},
    ),
    (
        "too-wide",
        lambda: png_header_only(20000, 10),
        PayloadTooLarge,
        "expected at most 16384 px per side",
        {},
    ),
    ("bmp-huge-header", bmp_huge_header, PayloadTooLarge, "expected at most", {}),
    (
        "1x1",
        lambda: encode(Image.new("RGB", (1, 1)), "PNG"),
        InvalidImage,
        "image is 1x1; expected at least 8 px per side",
        {},
    ),
    (
        "7x100",
        lambda: encode(Image.new("L", (7, 100)), "PNG"),
        InvalidImage,
        "expected at least 8 px per side",
        {},
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "needle", "limits"),
    [pytest.param(m, e, n, lim, id=name) for name, m, e, n, lim in BAD],
)
def test_bad_inputs(
    make: Callable[[], bytes], error: type[Exception], needle: str, limits: dict[str, int]
) -> None:
    data = make()
    with pytest.raises(error) as ei:
        decode_image(data, **limits)
    assert type(ei.value) is error
    assert needle in str(ei.value), str(ei.value)
    assert "expected" in str(ei.value)


def test_bomb_is_small_on_the_wire() -> None:
    assert len(png_bomb()) < 100_000
    assert Image.open(io.BytesIO(png_bomb(9000, 9000))).size == (9000, 9000)


def test_truncated_images_stay_errors() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---- odd but acceptable inputs: converted to BGR uint8 ------------------------------------
def check_bgr(out: np.ndarray, h: int, w: int) -> None:
    assert out.shape == (h, w, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_rgb_round_trip(fmt: str) -> None:
    rgb = noise()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(rgb), fmt, **kw))
    check_bgr(out, 48, 64)
    np.testing.assert_array_equal(out, rgb[..., ::-1])


def test_jpeg_matches_cv2() -> None:
    data = encode(Image.fromarray(smooth()), "JPEG", quality=90)
    out = decode_image(data)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert ref is not None
    check_bgr(out, 96, 128)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_is_replicated(fmt: str) -> None:
    gray = smooth()[..., 0]
    out = decode_image(
        encode(Image.fromarray(gray), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    )
    check_bgr(out, 96, 128)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - gray).max() <= (0 if fmt == "PNG" else 3)


def test_one_bit_png() -> None:
    bits = (np.indices((16, 24)).sum(0) % 2).astype(bool)
    out = decode_image(encode(Image.fromarray(bits), "PNG"))
    check_bgr(out, 16, 24)
    np.testing.assert_array_equal(out[..., 1], np.where(bits, 255, 0))


def test_rgba_and_la_drop_alpha() -> None:
    rgb = noise()
    alpha = np.random.default_rng(9).integers(0, 256, (48, 64, 1), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(np.concatenate([rgb, alpha], -1)), "PNG"))
    np.testing.assert_array_equal(out, rgb[..., ::-1])
    la = np.concatenate([rgb[..., :1], alpha], -1)
    out_la = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_array_equal(out_la[..., 2], rgb[..., 0])


def test_rgba_webp_and_bmp() -> None:
    rgba = np.concatenate([noise(), np.full((48, 64, 1), 128, np.uint8)], -1)
    for fmt, kw in (("WEBP", {"lossless": True, "exact": True}), ("BMP", {})):
        out = decode_image(encode(Image.fromarray(rgba), fmt, **kw))
        np.testing.assert_array_equal(out, rgba[..., 2::-1])


def test_sixteen_bit_gray_png() -> None:
    a16 = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 31 % 65536).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(a16), "PNG"))
    check_bgr(out, 40, 50)
    np.testing.assert_array_equal(out[..., 0], (a16 >> 8).astype(np.uint8))


def test_sixteen_bit_colour_png_from_cv2() -> None:
    bgr16 = (noise().astype(np.uint16) * 257)[..., ::-1].copy()
    ok, buf = cv2.imencode(".png", bgr16)
    assert ok
    out = decode_image(buf.tobytes())
    np.testing.assert_array_equal(out, (bgr16 >> 8).astype(np.uint8))


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png(transparency: bool) -> None:
    pal_img = Image.fromarray(noise()).quantize(16)
    kw = {"transparency": 0} if transparency else {}
    data = encode(pal_img, "PNG", **kw)
    out = decode_image(data)
    ref = np.asarray(pal_img.convert("RGB"))[..., ::-1]
    np.testing.assert_array_equal(out, ref)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (32, 24), (0, 255, 0, 0))  # pure magenta
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    check_bgr(out, 24, 32)
    b, g, r = (int(v) for v in out[12, 16])
    assert r > 240 and b > 240 and g < 15


def with_orientation(im: Image.Image, fmt: str, orientation: int, **kw: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), **kw)


def test_exif_orientation_off_keeps_the_stored_grid() -> None:
    im = Image.fromarray(smooth(40, 80))
    out = decode_image(with_orientation(im, "JPEG", 6), exif_orientation=False)
    check_bgr(out, 40, 80)  # stored grid, not rotated to 80x40


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(fmt: str, orientation: int) -> None:
    """Every orientation gives PIL's exif_transpose pixels (lossless formats: exact)."""
    rgb = noise(24, 40, seed=orientation)
    kw: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    data = with_orientation(Image.fromarray(rgb), fmt, orientation, **kw)
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    out = decode_image(data)
    np.testing.assert_array_equal(out, np.asarray(ref)[..., ::-1])
    assert out.flags.c_contiguous
    if orientation >= 5:
        check_bgr(out, 40, 24)


def test_exif_orientation_6_jpeg_is_upright() -> None:
    """A sideways-stored JPEG (Orientation 6: rotate 90° CW to display) comes back upright."""
    upright = smooth(40, 80)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # stored rotated 90° CCW: 80x40
    data = with_orientation(Image.fromarray(stored), "JPEG", 6, quality=95)
    out = decode_image(data)
    check_bgr(out, 40, 80)
    assert np.abs(out[..., ::-1].astype(int) - upright.astype(int)).mean() < 3.0


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_out_of_range_orientation_is_as_stored(value: int) -> None:
    im = Image.fromarray(noise(16, 32))
    out = decode_image(with_orientation(im, "PNG", value))
    np.testing.assert_array_equal(out, noise(16, 32)[..., ::-1])


@settings(max_examples=25, deadline=None)
@given(
    img=arrays(np.uint8, st.tuples(st.integers(8, 40), st.integers(8, 40), st.just(3))),
    fmt=st.sampled_from(["PNG", "BMP"]),
)
def test_lossless_round_trip_property(img: np.ndarray, fmt: str) -> None:
    out = decode_image(encode(Image.fromarray(img), fmt))
    np.testing.assert_array_equal(out, img[..., ::-1])


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM\x00\x00", "BMP"),
        (b"GIF89a", "GIF"),
        (b"II*\x00", "TIFF"),
        (b"\x00\x00\x00\x1cftypavif", "AVIF"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"", None),
    ],
)
def test_sniff_format(data: bytes, fmt: str | None) -> None:
    assert sniff_format(data) == fmt


# ---- files ---------------------------------------------------------------------------------
def test_read_image_file_real_coco_image() -> None:
    path = sorted(IMAGES.glob("*.jpg"))[0]
    out = read_image_file(path)
    ref = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert ref is not None
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 1.0


def test_read_image_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="expected a readable image file"):
        read_image_file(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImage, match="expected an image file"):
        read_image_file(tmp_path)
    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.fromarray(noise(64, 64)), "PNG"))
    with pytest.raises(PayloadTooLarge, match="expected at most 100 bytes"):
        read_image_file(big, max_bytes=100)
    txt = tmp_path / "notes.jpg"
    txt.write_text("not really a jpeg")
    with pytest.raises(InvalidImage, match=ACCEPTED):
        read_image_file(txt)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty file") as exc:
        read_image_file(empty)
    assert "body" not in exc.value.message
