"""Generated hostile payloads, shared by tests/api/test_hostile.py and
bench/hostile.py.  Nothing here is stored on disk; every payload is built in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

_DQT = b"\xff\xdb\x00\x43\x00" + b"\x01" * 64


def _seg(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _dht(tc_th: int, symbols: list[int]) -> bytes:
    """A Huffman table whose codes are ``len(symbols)`` codes of increasing length (1, 2, ...)."""
    counts = [0] * 16
    for i in range(len(symbols)):
        counts[min(i, 15)] += 1
    return _seg(0xC4, bytes([tc_th, *counts, *symbols]))


def _stuff(bits: str) -> bytes:
    """Pack a bit string (padded with 1s) into bytes with 0xFF byte stuffing."""
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        b = int(bits[i : i + 8], 2)
        out.append(b)
        if b == 0xFF:
            out.append(0)
    return bytes(out)


def jpeg_scan_bomb(side: int = 2048, scans: int = 400) -> bytes:
    """A grey progressive JPEG declaring side×side: one complete DC scan, then ``scans``
    identical AC scans that each skip every block with end-of-band runs (a few dozen bytes per
    scan, a full pass over the coefficients per scan for the decoder)."""
    blocks = (-(-side // 8)) ** 2
    sof = _seg(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
    dc_table = _dht(0x00, [0])  # one 1-bit code: category 0
    ac_table = _dht(0x10, [0xE0])  # one 1-bit code: EOB14 (+14 extra bits)
    dc_scan = _seg(0xDA, b"\x01\x01\x00\x00\x00\x00") + b"\x00" * (-(-blocks // 8))
    runs = -(-blocks // 32767)
    ac_data = _stuff(("0" + "1" * 14) * runs)
    ac_scan = _seg(0xDA, b"\x01\x01\x00\x01\x3f\x00") + ac_data
    return b"\xff\xd8" + _DQT + sof + dc_table + ac_table + dc_scan + ac_scan * scans + b"\xff\xd9"


def jpeg_header_only(side: int = 6324) -> bytes:
    """A baseline colour JPEG header declaring side×side, a scan header and no scan data."""
    comps = b"\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    sof = _seg(0xC0, struct.pack(">BHHB", 8, side, side, 3) + comps)
    sos = _seg(0xDA, b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00")
    return b"\xff\xd8" + _DQT + sof + _dht(0x00, [0]) + _dht(0x10, [0]) + sos + b"\xff\xd9"


def truncated_jpeg_with_eoi(data: bytes, keep: float = 0.6) -> bytes:
    """A real JPEG cut at ``keep`` of its length with an end-of-image marker appended."""
    return data[: int(len(data) * keep)] + b"\xff\xd9"


def png16_gray(side: int = 4000) -> bytes:
    """A 16-bit greyscale all-zero PNG of side×side (small on the wire)."""
    row = b"\x00" * (1 + 2 * side)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 250) for _ in range(side // 250)]
    parts.append(comp.compress(row * (side % 250)))
    parts.append(comp.flush())
    return _png(struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0), b"".join(parts))


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(ihdr: bytes, idat: bytes, extra: bytes = b"") -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def png_many_chunks(chunks: int = 30_000) -> bytes:
    """A valid 16×16 PNG whose image data is split into ``chunks`` IDAT chunks (most empty)."""
    raw = b"".join(b"\x00" + b"\x80" * 48 for _ in range(16))
    z = zlib.compress(raw)
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    idats = _chunk(b"IDAT", z) + _chunk(b"IDAT", b"") * (chunks - 1)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + idats + _chunk(b"IEND", b"")


def webp_lossless(side: int = 4000) -> bytes:
    """A lossless WebP of a flat side×side image (a few KB on the wire)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 90, 90)).save(buf, "WEBP", lossless=True, quality=0)
    return buf.getvalue()


def bmp_rle8(side: int = 512) -> bytes:
    """An 8-bit RLE-compressed BMP (each row: one run + end of line)."""
    rows = bytearray()
    for _ in range(side):
        left = side
        while left > 0:
            n = min(255, left)
            rows += bytes([n, 1])
            left -= n
        rows += b"\x00\x00"
    rows += b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    return head + info + palette + bytes(rows)


def bmp_negative_width(width: int = 64, height: int = 64) -> bytes:
    """An uncompressed 24-bit BMP whose header says width = -width."""
    row = (width * 3 + 3) & ~3
    info = struct.pack("<IiiHHIIiiII", 40, -width, height, 1, 24, 0, row * height, 0, 0, 0, 0)
    head = b"BM" + struct.pack("<IHHI", 54 + row * height, 0, 0, 54)
    return head + info + b"\x00" * (row * height)


def noisy_jpeg(width: int = 3000, height: int = 2000, seed: int = 0) -> bytes:
    """Random noise as a JPEG (large on the wire: a big render=true overlay)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90
    )
    return buf.getvalue()


def _image_multipart(data: bytes, boundary: str, filename: str | None) -> tuple[bytes, str]:
    """A multipart body of one JPEG part named ``image`` holding ``data`` (a ``filename``
    parameter only when given) and its Content-Type."""
    name = 'name="image"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{boundary}\r\nContent-Disposition: form-data; {name}\r\n"
    head += "Content-Type: image/jpeg\r\n\r\n"
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def near_boundary_multipart(size: int, boundary: str = "xYzZy") -> tuple[bytes, str]:
    """A multipart body whose image part is ``size`` bytes of near-boundaries (the whole
    delimiter followed by a wrong byte, ``\\r\\n--xYzZyQ`` repeated): the worst case of
    python-multipart's parser (~0.15 s per MB on the event loop)."""
    near = ("\r\n--" + boundary + "Q").encode()
    return _image_multipart(near * (size // len(near)), boundary, "x.jpg")


def multipart_without_filename(image: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    """A multipart body with the image in a part named ``image`` that has no filename."""
    return _image_multipart(image, boundary, None)


def smooth_jpeg(width: int = 6324, height: int = 6324) -> bytes:
    """A large smooth colour JPEG (a few MB): the biggest image the default limits allow."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = x
    rgb[..., 1] = y
    rgb[..., 2] = (x + y) / 2
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    return buf.getvalue()
