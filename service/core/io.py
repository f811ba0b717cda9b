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
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
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
from darkpose.service.core.working import jpeg_draft_size, reduce_to, working_size

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

#: Formats accepted (PIL format names), in the order they are named in messages.
ACCEPTED = ("JPEG", "PNG", "WebP", "BMP")
ACCEPTED_TEXT = f"a {'/'.join(ACCEPTED)} image"
#: ``sniff_format`` names of the accepted formats
ACCEPTED_FORMATS = frozenset(name.upper() for name in ACCEPTED)

# Defaults equal to darkpose.service.settings.Settings (core does not import the settings module).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 16384
DEFAULT_MIN_SIDE = 8

#: ``on_header(width, height, mode)``: called after the header checks, before decoding, with the
#: size the decoder will hold (the full size, or a JPEG's DCT-scaled size at a working side).
HeaderHook = Callable[[int, int, str], None]

#: EXIF tag number of ``Orientation``.
EXIF_ORIENTATION_TAG = 0x0112

__all__ = [
    "ACCEPTED",
    "ACCEPTED_FORMATS",
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


def _cvt(src: npt.NDArray[np.uint8], code: int) -> U8:
    """``cv2.cvtColor`` typed for mypy (uint8 in, uint8 out)."""
    return np.asarray(cv2.cvtColor(src, code), dtype=np.uint8)


#: Images up to this many pixels are copied out with ``np.asarray`` (fastest; the transient
#: ``bytes`` copy is small); larger ones piece by piece (:func:`_pixels`).
LEAN_ABOVE_PIXELS = 4_000_000


def _pixels(im: Image.Image) -> npt.NDArray[np.generic]:
    """The decoded pixels of ``im`` as an array (PIL's shape and dtype).  Large images are
    filled from PIL's raw encoder piece by piece into a new writable array: no intermediate
    ``bytes`` copy of the whole image, unlike ``np.asarray(im)`` (which joins ``tobytes()``
    chunks and may be read-only)."""
    if im.size[0] * im.size[1] <= LEAN_ABOVE_PIXELS:
        return np.asarray(im)
    shape, typestr = Image._conv_type_shape(im)
    out = np.empty(shape, dtype=np.dtype(typestr))
    flat = out.reshape(-1).view(np.uint8)
    encoder = Image._getencoder(im.mode, "raw", im.mode)
    encoder.setimage(im.im, (0, 0, *im.size))
    bufsize = max(1 << 20, im.size[0] * 4)
    pos = 0
    while True:
        _, errcode, chunk = encoder.encode(bufsize)
        flat[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        pos += len(chunk)
        if errcode:
            break
    if errcode < 0 or pos != flat.size:
        raise InvalidImage(
            f"decoded {im.mode} pixels: expected {flat.size} bytes, got {pos} (error {errcode})"
        )
    return out


def _to_bgr(im: Image.Image) -> U8:
    """Decoded PIL image of any mode → BGR uint8 (H, W, 3) C-contiguous.

    ``im`` is closed (its pixel memory freed) as soon as its pixels are copied out, so at most
    one extra full-size copy exists at a time."""
    mode = im.mode
    if mode == "1":
        converted = im.convert("L")
        im.close()
        im, mode = converted, "L"
    elif mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "RGBa", "I") and not mode.startswith(
        "I;16"
    ):
        # P, PA, CMYK, YCbCr, LAB, HSV, F, …: let PIL convert (palette alpha is ignored).
        converted = im.convert("RGB")
        im.close()
        im, mode = converted, "RGB"
    a = _pixels(im)
    im.close()
    if mode.startswith("I;16") or mode == "I":
        if a.dtype.itemsize == 2:  # uint16 in either byte order: keep the high byte (>> 8)
            order = a.dtype.byteorder
            big = order == ">" or (order in "=|" and sys.byteorder == "big")
            high = 0 if big else 1
            gray = np.ascontiguousarray(a.view(np.uint8).reshape(*a.shape, 2)[..., high])
        else:  # 32-bit "I": clip in place, shift in place, narrow once
            if not a.flags.writeable:
                a = a.copy()
            np.clip(a, 0, 65535, out=a)
            np.right_shift(a, 8, out=a)
            gray = a.astype(np.uint8)
        del a
        return _cvt(gray, cv2.COLOR_GRAY2BGR)
    if mode == "L":
        return _cvt(np.asarray(a, dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    if mode == "LA":
        return _cvt(np.ascontiguousarray(a[..., 0], dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    if mode in ("RGBA", "RGBX", "RGBa"):
        return _cvt(np.asarray(a, dtype=np.uint8), cv2.COLOR_RGBA2BGR)
    rgb = np.asarray(a, dtype=np.uint8)
    if not rgb.flags.writeable:  # a small image: a converted copy
        return _cvt(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb)  # in place: no second copy
    return rgb


def exif_orientation_of(im: Image.Image) -> int:
    """The EXIF ``Orientation`` (1…8) of an opened image; 1 when absent, unreadable or out of
    range (a broken EXIF block never fails the decode)."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
        orientation = int(value)
    except Exception:  # noqa: BLE001 - any EXIF parser failure means "as stored"
        logger.debug("unreadable EXIF block; orientation taken as 1")
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def apply_exif_orientation(image: npt.NDArray[np.uint8], orientation: int) -> U8:
    """``image`` (H, W, C) as stored → upright per the EXIF ``orientation`` (1…8), the same
    pixels as PIL's ``ImageOps.exif_transpose``; orientations 5–8 swap H and W.  Returns a
    C-contiguous array (``image`` itself for orientation 1 or an unknown value)."""
    ops = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180°
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transpose
        6: lambda a: a.swapaxes(0, 1)[:, ::-1],  # stored 90° CCW: rotate 90° CW to display
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # transverse
        8: lambda a: a.swapaxes(0, 1)[::-1],  # stored 90° CW: rotate 90° CCW to display
    }
    op = ops.get(int(orientation))
    if op is None:
        return image
    return np.ascontiguousarray(op(image))


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    max_png_chunks: int = DEFAULT_MAX_PNG_CHUNKS,
    exif_orientation: bool = True,
    on_header: HeaderHook | None = None,
) -> U8:
    """Decode untrusted image bytes to BGR uint8 ``(H, W, 3)`` (see the module docstring),
    upright per the EXIF orientation unless ``exif_orientation=False`` (pixels as stored).

    Raises :class:`InvalidImage` (empty, unreadable, corrupt, truncated, too small),
    :class:`PayloadTooLarge` (bytes, pixels, a side, JPEG scans or PNG chunks over the limit —
    checked before decoding) or :class:`UnsupportedMediaType` (GIF, TIFF, animations, RLE
    BMP, …).  ``on_header(width, height, mode)`` runs after the header checks and before
    decoding; what it raises propagates.
    """
    return decode_working(
        data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        max_side=max_side,
        min_side=min_side,
        max_jpeg_scans=max_jpeg_scans,
        max_png_chunks=max_png_chunks,
        exif_orientation=exif_orientation,
        on_header=on_header,
    ).image


def decode_working(
    data: bytes,
    *,
    working_side: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    max_png_chunks: int = DEFAULT_MAX_PNG_CHUNKS,
    exif_orientation: bool = True,
    on_header: HeaderHook | None = None,
) -> Decoded:
    """:func:`decode_image` at a working resolution (:mod:`darkpose.service.core.working`):
    an image whose longest side exceeds ``working_side`` (> 0) comes back reduced — a JPEG
    decoded directly at the smallest DCT scale that keeps its longest side ≥ ``working_side``,
    another format reduced to exactly ``working_side``.  Every limit is checked against the full
    size declared in the header; ``on_header`` gets the size the decoder will hold (a JPEG's
    DCT-scaled size, else the full size).  ``working_side=0``: full resolution."""
    if not data:
        raise InvalidImage(f"empty image data; expected {ACCEPTED_TEXT}")
    n_bytes = len(data)
    if n_bytes > max_bytes:
        raise PayloadTooLarge(f"image is {n_bytes} bytes; expected at most {max_bytes} bytes")
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
        eoi = check_jpeg(data, max_jpeg_scans).eoi
    elif fmt == "PNG":
        check_png(data, max_png_chunks)
    elif fmt == "BMP":
        check_bmp(data)
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        # PIL refuses > 2 * Image.MAX_IMAGE_PIXELS in Image.open itself, before our check.
        m = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{m.group(1)} pixels" if m else "too many pixels"
        raise PayloadTooLarge(f"image has {count}; expected at most {max_pixels} pixels") from exc
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
            max_pixels=max_pixels,
            max_side=max_side,
            min_side=min_side,
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
            again = _to_bgr(im)
    except Exception:  # noqa: BLE001 - a complete file decodes with the probe as without it
        return True
    return again.shape != decoded.shape or not np.array_equal(again, decoded)


def _check_and_load(
    im: Image.Image,
    fmt: str,
    *,
    max_pixels: int,
    max_side: int,
    min_side: int,
    hook: HeaderHook | None = None,
    exif_orientation: bool = True,
    draft: tuple[int, int] | None = None,
) -> tuple[U8, int]:
    """Limits (on the declared full size), then decode — a JPEG at the DCT scale that keeps at
    least ``draft`` (w, h) when given: ``(BGR pixels as stored, EXIF orientation or 1)``."""
    w, h = im.size
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
        # read after load (PNG keeps eXIf after the pixels) and before _to_bgr closes ``im``
        orientation = exif_orientation_of(im) if exif_orientation else 1
        out = _to_bgr(im)
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
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    max_png_chunks: int = DEFAULT_MAX_PNG_CHUNKS,
    exif_orientation: bool = True,
) -> U8:
    """Read and decode an image file for the CLI (same limits, orientation handling and errors
    as :func:`decode_image`; a missing, empty or unreadable file → :class:`InvalidImage`)."""
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
    return decode_image(
        data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        max_side=max_side,
        min_side=min_side,
        max_jpeg_scans=max_jpeg_scans,
        max_png_chunks=max_png_chunks,
        exif_orientation=exif_orientation,
    )
