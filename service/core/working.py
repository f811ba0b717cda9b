"""Working resolution: large photos are worked on at a reduced size.

The detector sees a few hundred pixels and each pose crop 256×192, so most pixels of a 12 MP
photo are paid for (decoding, memory) and then thrown away.  With a working side ``S > 0`` an
image whose longest side exceeds ``S`` is worked on at a reduced size that keeps a longest side
of at least ``S``:

* JPEG is decoded directly at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the longest
  side ≥ ``S`` (libjpeg's scaled IDCT, through PIL's ``Image.draft``) and used as decoded
  (longest side from ``S`` to under ``2 S``; a JPEG that no DCT scale fits is decoded at full
  size); the decoder never holds the full-size pixels;
* other formats (PNG, WebP, BMP) are decoded at full size and reduced to a longest side of
  exactly ``S`` with ``cv2.INTER_AREA``.

Coordinates found on the working image map back to the original (upright) image with one
scale per axis, ``s = original / working``, and pixel centres at integer positions:
``x = (u + 0.5) * s - 0.5`` (:func:`to_original_xy`; applied to the results in one place,
:func:`darkpose.service.core.pipeline.to_original`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["jpeg_draft_size", "reduce_to", "to_original_xy", "working_size"]


def working_size(width: int, height: int, working_side: int) -> tuple[int, int] | None:
    """``(w, h)`` of the working image of a ``width`` × ``height`` image: longest side
    ``working_side``, aspect kept (each side ≥ 1); ``None`` when no reduction applies
    (``working_side`` ≤ 0 or the image is not larger)."""
    longest = max(width, height)
    if working_side <= 0 or longest <= working_side:
        return None
    k = working_side / longest
    return max(1, round(width * k)), max(1, round(height * k))


def jpeg_draft_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for so that libjpeg's DCT scale keeps at least
    ``target`` (w, h) pixels: ``target`` rounded up (draft picks the largest reduction whose
    result is ≥ the request)."""
    return max(1, min(width, math.ceil(target[0]))), max(1, min(height, math.ceil(target[1])))


def reduce_to(image: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """``image`` (H, W, 3) uint8 → (size[1], size[0], 3) with ``cv2.INTER_AREA`` (pixel-area
    averaging); ``image`` itself when it already has that size."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)


def to_original_xy(
    xy: npt.NDArray[np.float32], scale: tuple[float, float]
) -> npt.NDArray[np.float32]:
    """Working-image coordinates (..., 2) → original-image coordinates (pixel centres at
    integer positions): ``x = (u + 0.5) * sx - 0.5``, ``y = (v + 0.5) * sy - 0.5``."""
    s = np.asarray(scale, np.float32)
    return ((np.asarray(xy, np.float32) + np.float32(0.5)) * s - np.float32(0.5)).astype(np.float32)
