"""Gaussian target heatmaps (mmpose ``MSRAHeatmap`` semantics), biased or unbiased (UDP).

The inverse of :func:`darkpose.service.core.codec.decode_heatmaps`: training targets and test
fixtures.  Coordinates are heatmap pixels with pixel centres at integer positions; ``(x, y)``
order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InputError, InvalidParameter

__all__ = ["encode_heatmaps"]

F32 = npt.NDArray[np.float32]


def encode_heatmaps(
    keypoints: Any,
    visible: Any,
    heatmap_size: tuple[int, int] = (48, 64),
    sigma: float = 2.0,
    unbiased: bool = True,
) -> tuple[F32, F32]:
    """Gaussian target heatmaps, vectorised over (N, K) (mmpose MSRAHeatmap semantics).

    keypoints: (N, K, 2) (x, y) heatmap px; visible: (N, K) bool or float (visible where
    ``>= 0.5``); heatmap_size: (W, H); sigma > 0.

    ``unbiased=True``: Gaussian centred at the sub-pixel location over the whole map (UDP).
    ``unbiased=False``: HRNet's biased target, centred at ``int(x + 0.5)`` and cut to a
    ``2*3*sigma+1`` square.  A keypoint that is invisible, or whose 3-sigma square does not
    intersect the map, gets weight 0 and an all-zero map; other weights are ``visible``.

    Returns heatmaps (N, K, H, W) float32 and weights (N, K) float32.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise InputError(f"keypoints: expected shape (N, K, 2), got {kp.shape}")
    vis = np.asarray(visible, dtype=np.float64)
    if vis.shape != kp.shape[:2]:
        raise InputError(f"visible: expected shape {kp.shape[:2]}, got {vis.shape}")
    if not np.isfinite(kp).all():
        raise InputError("keypoints: expected finite coordinates, got NaN/inf")
    if not np.isfinite(vis).all():
        raise InputError("visible: expected finite values, got NaN/inf")
    if len(heatmap_size) != 2:
        raise InvalidParameter(f"heatmap_size: expected (W, H), got {heatmap_size!r}")
    W, H = (int(s) for s in heatmap_size)
    if W < 1 or H < 1:
        raise InvalidParameter(f"heatmap_size: expected positive (W, H), got {heatmap_size!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise InvalidParameter(f"sigma: expected a finite value > 0, got {sigma!r}")
    sigma = float(sigma)
    N, K = kp.shape[:2]
    radius = sigma * 3
    px = np.arange(W, dtype=np.float64)
    py = np.arange(H, dtype=np.float64)
    inv2s2 = 1.0 / (2 * sigma * sigma)

    if unbiased:
        mu = kp
        left, top = mu[..., 0] - radius, mu[..., 1] - radius
        right, bottom = mu[..., 0] + radius + 1, mu[..., 1] + radius + 1
        gx = np.exp(-((px - mu[..., 0, None]) ** 2) * inv2s2)  # (N, K, W)
        gy = np.exp(-((py - mu[..., 1, None]) ** 2) * inv2s2)  # (N, K, H)
    else:
        # mmpose: mu = int(kp + 0.5); window [left, right) with left = int(mu - radius),
        # right = int(mu + radius + 1) (int truncates towards 0), value at pixel p =
        # g(p - left - size // 2), size = len(arange(0, 2*radius + 1)): for integer radii that
        # is a Gaussian centred at mu, elsewhere mmpose's quirks are kept.
        mu = np.trunc(kp + 0.5)
        size = int(np.ceil(2 * radius + 1))
        half = float(size // 2)
        lt = np.trunc(mu - radius)
        rb = np.trunc(mu + radius + 1)
        left, top = lt[..., 0], lt[..., 1]
        right, bottom = rb[..., 0], rb[..., 1]
        cx = left + half
        cy = top + half
        inx = (px >= left[..., None]) & (px < right[..., None])
        iny = (py >= top[..., None]) & (py < bottom[..., None])
        gx = np.where(inx, np.exp(-((px - cx[..., None]) ** 2) * inv2s2), 0.0)
        gy = np.where(iny, np.exp(-((py - cy[..., None]) ** 2) * inv2s2), 0.0)

    outside = (left >= W) | (top >= H) | (right < 0) | (bottom < 0)
    keep = (vis >= 0.5) & ~outside
    weights = np.where(keep, vis, 0.0).astype(np.float32)
    gx = gx * keep[..., None]
    heatmaps = (gy[..., :, None] * gx[..., None, :]).astype(np.float32)
    return heatmaps, weights
