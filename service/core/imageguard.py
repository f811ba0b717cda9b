"""Structural checks of untrusted image bytes, made before any decoder sees them.

Decoders spend CPU in proportion to what a file *declares*, not to its size: a 10 KB
progressive JPEG that declares 6300×6300 and repeats thousands of empty scans makes libjpeg
walk the whole coefficient buffer once per scan (seconds of CPU), a PNG split into a million
empty chunks and an RLE-compressed BMP are decoded by Python code holding the interpreter lock.
The checks here walk the container structure only (markers / chunk headers, C-speed searches
where the walk would be long) and refuse such files cheaply:

* JPEG (:func:`check_jpeg`): at most ``max_scans`` scans (``SOS`` markers) and
  ``4 * max_scans + 256`` markers in all; a frame header (``SOFn``) and at least one scan must be
  present; and the entropy-coded bytes must be enough to code every 8×8 block the frame
  declares (≥ 2 bits per block for sequential Huffman, ≥ 1 bit for progressive: a DC code, and
  an end-of-block code in sequential mode, are at least one bit each).  A 222-byte header
  declaring 6324² is refused here instead of being decoded as grey fill.
* PNG (:func:`check_png`): at most ``max_chunks`` chunks before ``IEND`` (libpng writes 8 KiB
  ``IDAT`` chunks: a 20 MiB file has ~2 600).
* BMP (:func:`check_bmp`): a positive width; RLE4/RLE8 compression (decoded by a pure-Python
  decoder) is refused as unsupported.

:func:`jpeg_tail_is_fill` and :func:`jpeg_with_probe` are the checks made *after* decoding:
libjpeg fills the blocks of a truncated scan with zero coefficients (a flat 128 grey) and only
warns, so a truncated JPEG with an end-of-image marker appended would otherwise decode
"successfully".  When the last rows are that grey, the file is decoded a second time with
non-marker bytes inserted before its end-of-image marker: a complete file decodes to the same
pixels, a truncated one does not.  (A progressive JPEG cut after its first scans decodes as a
coarser image, not as grey, and is not detected.)

Every error says what was expected and what came.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

#: Default scan limit of :func:`check_jpeg` (progressive encoders write about 10).
DEFAULT_MAX_JPEG_SCANS = 100
#: Default chunk limit of :func:`check_png`.
DEFAULT_MAX_PNG_CHUNKS = 20_000

# A marker inside entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart
# marker RST0-7 nor another fill 0xFF.
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_HUFFMAN_DCT = frozenset({0xC0, 0xC1, 0xC2})  # arithmetic / lossless: no bits-per-block bound
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_VALID = "expected a complete, valid JPEG/PNG/WebP/BMP image"


@dataclass(frozen=True)
class JpegStructure:
    """What :func:`check_jpeg` learnt from the markers (first picture only)."""

    width: int
    height: int
    components: int
    progressive: bool
    scans: int
    entropy_bytes: int
    blocks: int  # 8x8 blocks of all components (without MCU padding)
    eoi: int  # offset of the end-of-image marker of the first picture (-1: none)


def _blocks(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    hmax = max(h for h, _ in sampling)
    vmax = max(v for _, v in sampling)
    total = 0
    for h, v in sampling:
        cw = -(-width * h // hmax)
        ch = -(-height * v // vmax)
        total += (-(-cw // 8)) * (-(-ch // 8))
    return total


def check_jpeg(data: bytes, max_scans: int = DEFAULT_MAX_JPEG_SCANS) -> JpegStructure:
    """Walk the markers of a JPEG and refuse what would cost more to decode than it carries.

    Raises :class:`PayloadTooLarge` (more than ``max_scans`` scans or too many markers) or
    :class:`InvalidImage` (no frame header, no scan, too few entropy-coded bytes for the
    declared size, a segment running past the end).
    """
    n = len(data)
    max_markers = 4 * max_scans + 256
    pos = 2  # after SOI
    markers = scans = entropy = 0
    eoi = -1
    frame: tuple[int, int, int, bool, list[tuple[int, int]], int] | None = None
    while pos < n:
        if data[pos] != 0xFF:  # extraneous bytes: libjpeg skips to the next marker, so do we
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                break
            pos = nxt
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        markers += 1
        if markers > max_markers:
            raise PayloadTooLarge(
                f"JPEG has more than {max_markers} markers; expected at most {max_markers} "
                f"(at most {max_scans} scans)"
            )
        if marker == 0xD9:  # EOI: the first picture ends (MPO pictures follow)
            eoi = pos - 2
            break
        if marker in _STANDALONE:
            continue
        if marker == 0xD8:
            raise InvalidImage(f"JPEG structure: a second start-of-image marker; {_VALID}")
        if pos + 2 > n:
            break  # truncated: the decoder reports it
        length = struct.unpack_from(">H", data, pos)[0]
        if length < 2 or pos + length > n:
            raise InvalidImage(
                f"JPEG segment 0x{marker:02x} at byte {pos - 2}: expected {length} bytes, got "
                f"{n - pos}; {_VALID}"
            )
        if marker in _SOF and frame is None and length >= 8:
            _, height, width, nf = struct.unpack_from(">BHHB", data, pos + 2)
            sampling = []
            for i in range(nf):
                off = pos + 8 + 3 * i
                if off + 2 > pos + length:
                    break
                hv = data[off + 1]
                sampling.append((max(1, hv >> 4), max(1, hv & 0x0F)))
            frame = (width, height, nf, marker in _PROGRESSIVE, sampling, marker)
        pos += length
        if marker == 0xDA:  # SOS: entropy-coded data follows until the next real marker
            scans += 1
            if scans > max_scans:
                raise PayloadTooLarge(
                    f"JPEG has more than {max_scans} scans; expected at most {max_scans}"
                )
            m = _MARKER_IN_SCAN.search(data, pos)
            end = m.start() if m is not None else n
            entropy += end - pos
            pos = end
    if frame is None:
        raise InvalidImage(f"JPEG has no frame header (SOF); {_VALID}")
    width, height, nf, progressive, sampling, sof = frame
    if scans == 0:
        raise InvalidImage(f"JPEG declares {width}x{height} but has no scan data; {_VALID}")
    blocks = _blocks(width, height, sampling) if sampling and width and height else 0
    if sof in _HUFFMAN_DCT and blocks:
        bits = blocks * (1 if progressive else 2)
        need = -(-bits // 8)
        if entropy < need:
            raise InvalidImage(
                f"JPEG declares {width}x{height} ({blocks} blocks) but carries {entropy} bytes "
                f"of scan data, a truncated or corrupt JPEG; expected at least {need} bytes"
            )
    return JpegStructure(width, height, nf, progressive, scans, entropy, blocks, eoi)


def jpeg_tail_is_fill(image: npt.NDArray[np.uint8]) -> bool:
    """True when the bottom-right 8×8 pixels of a decoded JPEG (as stored, before orientation)
    are all exactly 128: libjpeg's fill for the blocks after a cut, which always include the
    last one.  Only a hint: :func:`jpeg_with_probe` tells a truncated file from one whose
    corner really is that grey."""
    if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
        return False
    corner = image[-min(8, image.shape[0]) :, -min(8, image.shape[1]) :]
    return bool(corner.min() == 128 and corner.max() == 128)


#: Bytes that decode to non-zero coefficients under any Huffman table (no 0xFF: no marker).
PROBE = bytes(range(0x01, 0xFF)) * 16


def jpeg_with_probe(data: bytes, eoi: int) -> bytes:
    """``data`` with :data:`PROBE` inserted before its end-of-image marker at ``eoi``.

    A complete JPEG decodes to the same pixels with the probe (the decoder has read every
    block before reaching it and skips it as extraneous bytes); a truncated one whose blocks
    were filled with grey decodes the probe into those blocks instead, so the pixels differ.
    """
    return data[:eoi] + PROBE + data[eoi:]


def check_png(data: bytes, max_chunks: int = DEFAULT_MAX_PNG_CHUNKS) -> int:
    """Count the chunks of a PNG up to ``IEND`` (or the end of the data); more than
    ``max_chunks`` → :class:`PayloadTooLarge`.  Returns the count.  Malformed files are left to
    the decoder, which reports them."""
    n = len(data)
    pos = 8
    count = 0
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        count += 1
        if count > max_chunks:
            raise PayloadTooLarge(
                f"PNG has more than {max_chunks} chunks; expected at most {max_chunks}"
            )
        if kind == b"IEND":
            break
        pos += 12 + length
    return count


def check_bmp(data: bytes) -> None:
    """Refuse a BMP with a non-positive width (:class:`InvalidImage`) or RLE compression
    (:class:`UnsupportedMediaType`: its decoder is pure Python)."""
    if len(data) < 26:
        return  # too short: the decoder reports it
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sides, no compression
        return
    if len(data) < 34:
        return
    width, _, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
    if width <= 0:
        raise InvalidImage(f"BMP width: expected a positive number of pixels, got {width}")
    if compression in (1, 2):
        kind = "RLE8" if compression == 1 else "RLE4"
        raise UnsupportedMediaType(
            f"{kind}-compressed BMP is not supported; expected an uncompressed BMP or a "
            "JPEG/PNG/WebP image"
        )
