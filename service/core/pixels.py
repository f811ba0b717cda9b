"""Decoded PIL image → BGR uint8 ``(H, W, 3)``, and EXIF orientation.

Used by :mod:`darkpose.service.core.io` once the limits passed (see its docstring for the
conversions: grayscale replicated, 16-bit ``>> 8``, alpha dropped, palette/CMYK/… via RGB).
Decoding keeps one copy of the pixels besides the decoder's own (16-bit data is narrowed
through a byte view, no wide temporaries).
"""

from __future__ import annotations

import logging
import sys

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from darkpose.service.core.errors import InvalidImage

__all__ = ["apply_exif_orientation", "exif_orientation_of", "to_bgr"]

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

#: EXIF tag number of ``Orientation``.
EXIF_ORIENTATION_TAG = 0x0112


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


def to_bgr(im: Image.Image) -> U8:
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
