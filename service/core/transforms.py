"""Box → crop geometry: the single owner of the affine convention.

Convention (everything else in the project relies on it):

* Coordinates are continuous pixel coordinates with **pixel centres at integer positions**,
  in the image, in the network input crop and in the heatmap (pixel ``(0, 0)`` covers
  ``[-0.5, 0.5) x [-0.5, 0.5)``).
* A box is described by a centre ``c = (cx, cy)`` and a scale ``s = (s_w, s_h)``: the size of
  the crop region **in image pixels** (mmpose 1.x convention, not HRNet's ``/200``).
  :func:`boxes_to_center_scale` expands the short side so that ``s_w / s_h`` equals the
  network input's aspect ratio (``W / H``) and multiplies by ``padding`` (1.25), exactly as
  mmpose's ``bbox_xyxy2cs`` + ``_fix_aspect_ratio``.
* Image → crop of size ``(W, H)`` (mmpose/HRNet training convention, what the shared models
  were trained with; mmpose builds it with ``cv2.getAffineTransform`` on the three points
  ``c → (W/2, H/2)``, ``c + (0, -s_w/2) → (W/2, H/2 - W/2)``, and a third point rotated by
  90°)::

      u = (x - cx) * W / s_w + W / 2
      v = (y - cy) * H / s_h + H / 2

  The box centre lands on ``W / 2`` (not ``(W - 1) / 2``).  With the aspect ratio fixed,
  ``W / s_w == H / s_h`` and this is exactly mmpose's ``get_warp_matrix(c, s, 0, (W, H))``.
* Heatmap (``(w, h)``) → network input: ``u = u_hm * W / w`` (same for ``v``), so heatmap →
  image is ``x = (u_hm - w / 2) * s_w / w + cx``.

Rotation is not used at inference time and is not implemented.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.types import ModelSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Minimum box side (image px) used for degenerate (zero-area) boxes.
MIN_BOX_SIZE = 1.0

__all__ = [
    "MIN_BOX_SIZE",
    "boxes_to_center_scale",
    "cut_crops",
    "get_affine_matrices",
    "heatmap_to_image",
    "image_to_heatmap",
    "normalize_crops",
    "warp_crops",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def _as_array(a: npt.ArrayLike, name: str, shape_tail: tuple[int, ...], ndim: int) -> F64:
    """Validate ``a`` as a finite float array of ``ndim`` dims ending in ``shape_tail``."""
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(f"{name}: expected a numeric array, got {type(a).__name__}") from exc
    if arr.ndim != ndim or arr.shape[arr.ndim - len(shape_tail) :] != shape_tail:
        lead = ["N", "K", "L"][: ndim - len(shape_tail)]
        want = "(" + ", ".join(lead + [str(d) for d in shape_tail]) + ")"
        raise InvalidParameter(f"{name}: expected shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidParameter(f"{name}: expected finite values, got NaN or inf")
    return arr


def _check_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise InvalidParameter(f"{name}: expected (W, H) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def xywh_to_xyxy(boxes: npt.ArrayLike) -> F32:
    """``boxes: (N, 4)`` x, y, w, h → ``(N, 4) float32`` x1, y1, x2, y2."""
    b = _as_array(boxes, "boxes", (4,), 2)
    out = b.copy()
    out[:, 2:] = b[:, :2] + b[:, 2:]
    return out.astype(np.float32)


def xyxy_to_xywh(boxes: npt.ArrayLike) -> F32:
    """``boxes: (N, 4)`` x1, y1, x2, y2 → ``(N, 4) float32`` x, y, w, h."""
    b = _as_array(boxes, "boxes", (4,), 2)
    out = b.copy()
    out[:, 2:] = b[:, 2:] - b[:, :2]
    return out.astype(np.float32)


def boxes_to_center_scale(
    boxes_xyxy: npt.ArrayLike, aspect_ratio: float, padding: float = 1.25
) -> tuple[F32, F32]:
    """Boxes → crop centres and scales (mmpose 1.x ``bbox_xyxy2cs`` + ``_fix_aspect_ratio``).

    boxes_xyxy: (N, 4); aspect_ratio: W / H of the network input; returns
    ``centers: (N, 2) float32`` and ``scales: (N, 2) float32`` = crop (w, h) in image pixels,
    with ``w / h == aspect_ratio``.  Boxes narrower than :data:`MIN_BOX_SIZE` (zero-area,
    inverted) get that minimum size so that nothing divides by zero.
    """
    b = _as_array(boxes_xyxy, "boxes_xyxy", (4,), 2)
    if not (np.isfinite(aspect_ratio) and aspect_ratio > 0):
        raise InvalidParameter(f"aspect_ratio: expected a positive number, got {aspect_ratio!r}")
    if not (np.isfinite(padding) and padding > 0):
        raise InvalidParameter(f"padding: expected a positive number, got {padding!r}")
    centers = (b[:, :2] + b[:, 2:]) * 0.5
    wh = np.maximum(b[:, 2:] - b[:, :2], MIN_BOX_SIZE)
    w, h = wh[:, 0], wh[:, 1]
    wider = w > h * aspect_ratio
    w_fixed = np.where(wider, w, h * aspect_ratio)
    h_fixed = np.where(wider, w / aspect_ratio, h)
    scales = np.stack([w_fixed, h_fixed], axis=1) * padding
    return centers.astype(np.float32), scales.astype(np.float32)


def _scale_factors(scales: F64, output_size: tuple[int, int]) -> tuple[F64, F64]:
    W, H = output_size
    s = np.maximum(scales, MIN_BOX_SIZE * 1e-3)
    return W / s[:, 0], H / s[:, 1]


def get_affine_matrices(
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    output_size: tuple[int, int],
    inverse: bool = False,
) -> F64:
    """Affine matrices for N boxes at once (no rotation).

    centers: (N, 2); scales: (N, 2) crop (w, h) in image px; output_size: (W, H).
    Returns ``(N, 2, 3) float64``: forward maps image → output
    (``u = (x - cx) * W / s_w + W / 2``), ``inverse=True`` maps output → image.
    """
    c = _as_array(centers, "centers", (2,), 2)
    s = _as_array(scales, "scales", (2,), 2)
    if c.shape[0] != s.shape[0]:
        raise InvalidParameter(
            f"centers/scales: expected the same N, got {c.shape[0]} and {s.shape[0]}"
        )
    W, H = _check_size(output_size, "output_size")
    kx, ky = _scale_factors(s, (W, H))
    n = c.shape[0]
    m = np.zeros((n, 2, 3), np.float64)
    if not inverse:
        m[:, 0, 0] = kx
        m[:, 1, 1] = ky
        m[:, 0, 2] = W * 0.5 - c[:, 0] * kx
        m[:, 1, 2] = H * 0.5 - c[:, 1] * ky
    else:
        m[:, 0, 0] = 1.0 / kx
        m[:, 1, 1] = 1.0 / ky
        m[:, 0, 2] = c[:, 0] - W * 0.5 / kx
        m[:, 1, 2] = c[:, 1] - H * 0.5 / ky
    return m


def cut_crops(
    image: npt.NDArray[np.generic],
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    input_size: tuple[int, int],
) -> npt.NDArray[np.generic]:
    """Cut N crops out of ``image`` (bilinear, constant-0 border), pixels left as they are.

    image: (H_img, W_img, 3) BGR (uint8 normally); centers/scales: (N, 2); input_size: (W, H).
    Returns ``(N, H, W, 3)`` in the image's dtype (uint8 stays uint8: a compact crop to ship
    to another process; other dtypes become float32).  :func:`normalize_crops` turns it into
    the network input; :func:`warp_crops` does both.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InvalidParameter(f"image: expected shape (H, W, 3), got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InvalidParameter(f"image: expected a non-empty image, got shape {img.shape}")
    W, H = _check_size(input_size, "input_size")
    mats = get_affine_matrices(centers, scales, (W, H))
    n = mats.shape[0]
    if img.dtype not in (np.uint8, np.float32):
        img = img.astype(np.float32)
    if not img.flags.c_contiguous:
        img = np.ascontiguousarray(img)
    crops = np.empty((n, H, W, 3), img.dtype)
    for i in range(n):
        cv2.warpAffine(
            img,
            mats[i],
            (W, H),
            dst=crops[i],
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
    return crops


def normalize_crops(crops: npt.NDArray[np.generic], spec: ModelSpec) -> F32:
    """(N, H, W, 3) BGR crops (uint8 or float32, from :func:`cut_crops`) → the network input
    ``(N, 3, H, W) float32``: channels in ``spec.channel_order``, then
    ``(pixel * spec.pixel_scale - mean) / std``."""
    c = np.asarray(crops)
    if c.ndim != 4 or c.shape[3] != 3:
        raise InvalidParameter(f"crops: expected shape (N, H, W, 3), got {c.shape}")
    n, H, W = c.shape[:3]
    out = np.empty((n, 3, H, W), np.float32)
    order = (2, 1, 0) if spec.channel_order == "RGB" else (0, 1, 2)
    mean = np.asarray(spec.mean, np.float64)
    std = np.asarray(spec.std, np.float64)
    if np.any(std == 0):
        raise InvalidParameter(f"spec.std: expected non-zero values, got {spec.std}")
    gain = (spec.pixel_scale / std).astype(np.float32)
    bias = (-mean / std).astype(np.float32)
    for dst_c, src_c in enumerate(order):
        np.multiply(c[..., src_c], gain[dst_c], out=out[:, dst_c], casting="unsafe")
        out[:, dst_c] += bias[dst_c]
    return out


def warp_crops(
    image: npt.NDArray[np.generic],
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    input_size: tuple[int, int],
    spec: ModelSpec | None = None,
) -> F32:
    """:func:`cut_crops` (same arguments) made channel-first float32: ``(N, 3, H, W)``.

    With ``spec=None`` raw BGR values (0–255 for uint8); with a :class:`ModelSpec` the network
    input of :func:`normalize_crops` (channels in ``spec.channel_order``, then
    ``(pixel * spec.pixel_scale - mean) / std``).  Boxes partly or fully outside the image give
    zero-padded (black before normalisation) crops.
    """
    crops = cut_crops(image, centers, scales, input_size)
    if spec is None:
        n, H, W = crops.shape[:3]
        out = np.empty((n, 3, H, W), np.float32)
        out[:] = crops.transpose(0, 3, 1, 2)
        return out
    return normalize_crops(crops, spec)


def _check_points(
    points: npt.ArrayLike, centers: npt.ArrayLike, scales: npt.ArrayLike, name: str
) -> tuple[F64, F64, F64]:
    p = _as_array(points, name, (2,), 3)
    c = _as_array(centers, "centers", (2,), 2)
    s = _as_array(scales, "scales", (2,), 2)
    if not (p.shape[0] == c.shape[0] == s.shape[0]):
        raise InvalidParameter(
            f"{name}/centers/scales: expected the same N, got "
            f"{p.shape[0]}, {c.shape[0]} and {s.shape[0]}"
        )
    return p, c, s


def _heatmap_scale(scales: F64, heatmap_size: tuple[int, int]) -> tuple[F64, F64]:
    """Heatmap px per image px ``(N, 1, 2)`` of each box and the heatmap centre ``(2,)``."""
    w, h = _check_size(heatmap_size, "heatmap_size")
    kx, ky = _scale_factors(scales, (w, h))
    return np.stack([kx, ky], axis=1)[:, None, :], np.array([w * 0.5, h * 0.5])


def heatmap_to_image(
    coords: npt.ArrayLike,
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    heatmap_size: tuple[int, int],
) -> F32:
    """Heatmap coordinates → image coordinates.

    coords: (N, K, 2) (x, y) heatmap px; centers/scales: (N, 2); heatmap_size: (w, h).
    Returns ``(N, K, 2) float32`` image px: ``x = (u - w / 2) * s_w / w + cx``.
    """
    p, c, s = _check_points(coords, centers, scales, "coords")
    k, half = _heatmap_scale(s, heatmap_size)
    return ((p - half) / k + c[:, None, :]).astype(np.float32)


def image_to_heatmap(
    points: npt.ArrayLike,
    centers: npt.ArrayLike,
    scales: npt.ArrayLike,
    heatmap_size: tuple[int, int],
) -> F32:
    """Image coordinates → heatmap coordinates (inverse of :func:`heatmap_to_image`).

    points: (N, K, 2) image px; centers/scales: (N, 2); heatmap_size: (w, h).
    Returns ``(N, K, 2) float32`` heatmap px: ``u = (x - cx) * w / s_w + w / 2``.
    """
    p, c, s = _check_points(points, centers, scales, "points")
    k, half = _heatmap_scale(s, heatmap_size)
    return ((p - c[:, None, :]) * k + half).astype(np.float32)
