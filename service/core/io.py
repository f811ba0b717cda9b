"""Untrusted image bytes → BGR uint8 array, with limits checked before decoding.

Order of checks in :func:`decode_image` (cheap first, nothing is decoded before the size is
known to be acceptable):

1. empty body → :class:`InvalidImage`; more than ``max_bytes`` → :class:`PayloadTooLarge`;
2. the format is sniffed from the magic bytes: JPEG (``FF D8 FF``), PNG (``89 50 4E 47``),
   WebP (``RIFF....WEBP``) and BMP (``BM``) are accepted; a recognised other format (GIF,
   TIFF, HEIC/AVIF, …) → :class:`UnsupportedMediaType`; bytes that are no known image →
   :class:`InvalidImage`;
3. PIL opens the header lazily (no pixel decoding) with only the sniffed format's plugin;
   ``w * h > max_pixels`` or a side ``> max_side`` → :class:`PayloadTooLarge` (PIL's own
   decompression-bomb error, raised by ``Image.open`` for images over
   ``2 * Image.MAX_IMAGE_PIXELS``, is mapped to the same error); a side ``< min_side`` →
   :class:`InvalidImage`; an animated PNG/WebP → :class:`UnsupportedMediaType` (multi-picture
   JPEGs, MPO, from cameras decode their first picture);
4. ``Image.load()`` decodes; any decoder failure → :class:`InvalidImage`.  Truncated files are
   errors, not half-grey images: this relies on PIL's default
   ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (never switch it on in this process).

Before step 3 the container structure is walked (:mod:`darkpose.service.core.imageguard`): a JPEG
with
more than ``max_jpeg_scans`` scans or too few entropy-coded bytes for its declared size, a PNG
with more than ``max_png_chunks`` chunks and RLE or negative-width BMPs are refused before a
decoder spends time on them; a JPEG whose last rows decode as libjpeg's grey fill (data
missing, end-of-image marker appended) is refused after decoding.  ``on_header(width, height,
mode)`` (optional) is called once the header passed the limits and before pixels are decoded:
the service admits the request's memory there.  Decoding keeps one copy of the pixels besides
the decoder's own (16-bit data is narrowed through a byte view, no wide temporaries).

:func:`decode_working` decodes at a working resolution (:mod:`darkpose.service.core.working`):
the limits above still apply to the declared full size; a JPEG is decoded at a DCT scale, so
``on_header`` then gets that smaller size (the pixels the decoder really holds).

Conversions to BGR uint8 ``(H, W, 3)`` C-contiguous:

* **EXIF orientation is applied** by default (``exif_orientation=True``), as image viewers,
  ``cv2.imread`` and PIL's ``ImageOps.exif_transpose`` do: a phone photo stored sideways with
  Orientation 6 comes back upright, and every coordinate refers to the upright grid.
  ``exif_orientation=False`` keeps the pixels as stored, which is the COCO convention
  (annotations refer to the stored pixel grid; evaluation reads images that way).  A missing,
  unreadable or out-of-range orientation tag counts as 1 (as stored);
* grayscale (``L``, ``1``) → replicated to 3 channels; 16-bit (``I;16*``, ``I``) → ``>> 8``;
* alpha (``RGBA``, ``LA``, ``PA``, palette with transparency) is **dropped**: the colour values
  are kept as stored, not composited (what ``cv2.imread(IMREAD_COLOR)`` does);
* palette, CMYK, YCbCr, … → converted to RGB by PIL, then to BGR.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from darkpose.service.core.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from darkpose.service.core.imageguard import (
    DEFAULT_MAX_JPEG_SCANS,
    DEFAULT_MAX_PNG_CHUNKS,
    check_bmp,
    check_jpeg,
    check_png,
    jpeg_tail_is_fill,
    jpeg_with_probe,
)
from darkpose.service.core.pixels import apply_exif_orientation, exif_orientation_of, to_bgr
from darkpose.service.core.working import jpeg_draft_size, reduce_to, working_size

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

#: Formats accepted (PIL format names), in the order they are named in messages.
ACCEPTED = ("JPEG", "PNG", "WebP", "BMP")
ACCEPTED_TEXT = f"a {'/'.join(ACCEPTED)} image"
#: ``sniff_format`` names of the accepted formats
ACCEPTED_FORMATS = frozenset(name.upper() for name in ACCEPTED)

# The decoders' default limits; the settings' image limits start from these (settings.groups).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 16384
DEFAULT_MIN_SIDE = 8

#: ``on_header(width, height, mode)``: called after the header checks, before decoding, with the
#: size the decoder will hold (the full size, or a JPEG's DCT-scaled size at a working side).
HeaderHook = Callable[[int, int, str], None]


class DecodeLimitKeywords(TypedDict, total=False):
    """The keyword arguments of :func:`decode_image`, :func:`decode_working` and
    :func:`read_image_file` that set a limit: the fields of :class:`DecodeLimits`."""

    max_bytes: int
    max_pixels: int
    max_side: int
    min_side: int
    max_jpeg_scans: int
    max_png_chunks: int


@dataclass(frozen=True)
class DecodeLimits:
    """The limits every decode checks, given to :func:`decode_image`, :func:`decode_working` and
    :func:`read_image_file` as keyword arguments of these names (an unknown name is a
    ``TypeError``; one not given takes its default, which is also the default of the matching
    :class:`darkpose.service.settings.Settings` field).

    max_bytes: most bytes of the encoded image; max_pixels: most ``w * h`` declared in the
    header; max_side / min_side: longest / shortest allowed side (px); max_jpeg_scans: most
    scans of a (progressive) JPEG; max_png_chunks: most chunks of a PNG.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    min_side: int = DEFAULT_MIN_SIDE
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS
    max_png_chunks: int = DEFAULT_MAX_PNG_CHUNKS


__all__ = [
    "ACCEPTED",
    "ACCEPTED_FORMATS",
    "DecodeLimitKeywords",
    "DecodeLimits",
    "Decoded",
    "apply_exif_orientation",
    "decode_image",
    "decode_working",
    "exif_orientation_of",
    "read_image_file",
    "sniff_format",
]


def sniff_format(data: bytes) -> str | None:
    """Name of the image format from magic bytes: ``JPEG``, ``PNG``, ``WEBP``, ``BMP`` for the
    accepted ones, another descriptive name for recognised unsupported ones, ``None`` when the
    bytes look like no known image format."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    # Recognised but not accepted.
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIC"
        return "ISO-BMFF (video/HEIF)"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL"
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6") and head[2:3] in (b"\n", b" ", b"\r"):
        return "PNM"
    stripped = head.lstrip()
    if stripped.startswith(b"<?xml") or stripped.lower().startswith(b"<svg"):
        return "SVG/XML"
    return None


@dataclass(frozen=True)
class Decoded:
    """A decoded image at its working resolution.

    image: (h, w, 3) BGR uint8, upright (per the EXIF orientation when asked);
    original_size: (W, H) of the full-resolution image in the same orientation (what the
    results' coordinates refer to).  ``image`` is the full image when no reduction applied.
    """

    image: U8
    original_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) = original / working size per axis; (1.0, 1.0) at full resolution."""
        return (
            self.original_size[0] / self.image.shape[1],
            self.original_size[1] / self.image.shape[0],
        )

    @property
    def original_shape(self) -> tuple[int, int]:
        """(H, W) of the full-resolution image."""
        return self.original_size[1], self.original_size[0]


def decode_image(
    data: bytes,
    *,
    exif_orientation: bool = True,
    on_header: HeaderHook | None = None,
    **limits: Unpack[DecodeLimitKeywords],
) -> U8:
    """Decode untrusted image bytes to BGR uint8 ``(H, W, 3)`` (see the module docstring),
    upright per the EXIF orientation unless ``exif_orientation=False`` (pixels as stored);
    ``limits``: the fields of :class:`DecodeLimits` by name.

    Raises :class:`InvalidImage` (empty, unreadable, corrupt, truncated, too small),
    :class:`PayloadTooLarge` (bytes, pixels, a side, JPEG scans or PNG chunks over the limit —
    checked before decoding) or :class:`UnsupportedMediaType` (GIF, TIFF, animations, RLE
    BMP, …).  ``on_header(width, height, mode)`` runs after the header checks and before
    decoding; what it raises propagates.
    """
    return _decode(data, DecodeLimits(**limits), 0, exif_orientation, on_header).image


def decode_working(
    data: bytes,
    *,
    working_side: int = 0,
    exif_orientation: bool = True,
    on_header: HeaderHook | None = None,
    **limits: Unpack[DecodeLimitKeywords],
) -> Decoded:
    """:func:`decode_image` at a working resolution (:mod:`darkpose.service.core.working`):
    an image whose longest side exceeds ``working_side`` (> 0) comes back reduced — a JPEG
    decoded directly at the smallest DCT scale that keeps its longest side ≥ ``working_side``,
    another format reduced to exactly ``working_side``.  Every limit is checked against the full
    size declared in the header; ``on_header`` gets the size the decoder will hold (a JPEG's
    DCT-scaled size, else the full size).  ``working_side=0``: full resolution."""
    return _decode(data, DecodeLimits(**limits), working_side, exif_orientation, on_header)


def _decode(
    data: bytes,
    lim: DecodeLimits,
    working_side: int,
    exif_orientation: bool,
    on_header: HeaderHook | None,
) -> Decoded:
    """:func:`decode_working` with its limits gathered."""
    if not data:
        raise InvalidImage(f"empty image data; expected {ACCEPTED_TEXT}")
    n_bytes = len(data)
    if n_bytes > lim.max_bytes:
        raise PayloadTooLarge(f"image is {n_bytes} bytes; expected at most {lim.max_bytes} bytes")
    fmt = sniff_format(bytes(data[:32]))
    if fmt is None:
        raise InvalidImage(
            f"the data is not a recognised image (starts with {bytes(data[:8])!r}); "
            f"expected {ACCEPTED_TEXT}"
        )
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(f"image format {fmt} is not supported; expected {ACCEPTED_TEXT}")
    eoi = -1
    if fmt == "JPEG":
        eoi = check_jpeg(data, lim.max_jpeg_scans).eoi
    elif fmt == "PNG":
        check_png(data, lim.max_png_chunks)
    elif fmt == "BMP":
        check_bmp(data)
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        # PIL refuses > 2 * Image.MAX_IMAGE_PIXELS in Image.open itself, before our check.
        m = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{m.group(1)} pixels" if m else "too many pixels"
        raise PayloadTooLarge(
            f"image has {count}; expected at most {lim.max_pixels} pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"cannot identify the {fmt} data; expected {ACCEPTED_TEXT}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(
            f"cannot read the {fmt} header ({exc}); expected {ACCEPTED_TEXT}"
        ) from exc
    try:
        full = im.size
        target = working_size(full[0], full[1], working_side)
        draft = jpeg_draft_size(full[0], full[1], target) if target and fmt == "JPEG" else None
        out, orientation = _check_and_load(
            im,
            fmt,
            lim,
            hook=on_header,
            exif_orientation=exif_orientation,
            draft=draft,
        )
        if fmt == "JPEG" and jpeg_tail_is_fill(out) and _jpeg_truncated(data, eoi, out, draft):
            raise InvalidImage(
                "JPEG data ends before the image does (its last blocks decode as the decoder's "
                "grey fill); expected a complete, valid JPEG image"
            )
        if target is not None and draft is None:  # a DCT-scaled JPEG is used as decoded
            out = reduce_to(out, target)
        upright = full[::-1] if orientation in (5, 6, 7, 8) else full
        return Decoded(apply_exif_orientation(out, orientation), (upright[0], upright[1]))
    finally:
        im.close()


def _jpeg_truncated(
    data: bytes, eoi: int, decoded: U8, draft: tuple[int, int] | None = None
) -> bool:
    """Decode ``data`` again (at the same ``draft`` scale) with a probe before its end-of-image
    marker (see :func:`darkpose.service.core.imageguard.jpeg_with_probe`): different pixels
    mean missing data."""
    if eoi < 0:
        return True
    try:
        with Image.open(io.BytesIO(jpeg_with_probe(data, eoi)), formats=["JPEG"]) as im:
            if draft is not None:
                im.draft(None, draft)
            im.load()
            again = to_bgr(im)
    except Exception:  # noqa: BLE001 - a complete file decodes with the probe as without it
        return True
    return again.shape != decoded.shape or not np.array_equal(again, decoded)


def _check_and_load(
    im: Image.Image,
    fmt: str,
    limits: DecodeLimits,
    *,
    hook: HeaderHook | None = None,
    exif_orientation: bool = True,
    draft: tuple[int, int] | None = None,
) -> tuple[U8, int]:
    """Limits (on the declared full size), then decode — a JPEG at the DCT scale that keeps at
    least ``draft`` (w, h) when given: ``(BGR pixels as stored, EXIF orientation or 1)``."""
    w, h = im.size
    max_pixels, max_side, min_side = limits.max_pixels, limits.max_side, limits.min_side
    if w <= 0 or h <= 0:
        raise InvalidImage(f"image is {w}x{h}; expected positive dimensions")
    if w * h > max_pixels:
        raise PayloadTooLarge(
            f"image is {w}x{h} = {w * h} pixels; expected at most {max_pixels} pixels"
        )
    if max(w, h) > max_side:
        raise PayloadTooLarge(f"image is {w}x{h}; expected at most {max_side} px per side")
    if min(w, h) < min_side:
        raise InvalidImage(f"image is {w}x{h}; expected at least {min_side} px per side")
    try:
        n_frames = int(getattr(im, "n_frames", 1))
    except Exception as exc:  # noqa: BLE001 - any parser failure means a broken file
        raise InvalidImage(
            f"cannot read the {fmt} frames ({exc}); expected {ACCEPTED_TEXT}"
        ) from exc
    if n_frames > 1 and im.format != "MPO":
        raise UnsupportedMediaType(
            f"animated {fmt} with {n_frames} frames is not supported; expected a still "
            f"{ACCEPTED_TEXT[2:]}"
        )
    if draft is not None:
        try:
            im.draft(None, draft)
        except Exception as exc:  # noqa: BLE001 - a header PIL cannot scale is a broken file
            raise InvalidImage(
                f"cannot read the {fmt} header ({exc}); expected {ACCEPTED_TEXT}"
            ) from exc
        w, h = im.size
    if hook is not None:
        hook(w, h, im.mode)
    try:
        im.load()
        # read after load (PNG keeps eXIf after the pixels) and before to_bgr closes ``im``
        orientation = exif_orientation_of(im) if exif_orientation else 1
        out = to_bgr(im)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, …
        raise InvalidImage(
            f"cannot decode the {fmt} image ({type(exc).__name__}: {exc}); "
            f"expected a complete, valid {ACCEPTED_TEXT[2:]}"
        ) from exc
    if out.shape != (h, w, 3) or out.dtype != np.uint8:  # pragma: no cover - defensive
        raise InvalidImage(
            f"decoded {fmt} has shape {out.shape} {out.dtype}; expected ({h}, {w}, 3) uint8"
        )
    return out, orientation


def read_image_file(
    path: str | os.PathLike[str],
    *,
    exif_orientation: bool = True,
    **limits: Unpack[DecodeLimitKeywords],
) -> U8:
    """Read and decode an image file for the CLI (same limits, orientation handling and errors
    as :func:`decode_image`; a missing, empty or unreadable file → :class:`InvalidImage`)."""
    lim = DecodeLimits(**limits)
    max_bytes = lim.max_bytes
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise InvalidImage(f"{p} is not a regular file; expected an image file")
        if size > max_bytes:
            raise PayloadTooLarge(f"{p} is {size} bytes; expected at most {max_bytes} bytes")
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidImage(
            f"cannot read {p} ({exc.strerror or exc}); expected a readable image file"
        ) from exc
    if not data:
        raise InvalidImage(f"{p} is an empty file; expected {ACCEPTED_TEXT}")
    return _decode(data, lim, 0, exif_orientation, None).image
