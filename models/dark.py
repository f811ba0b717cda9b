"""DARK decoding expressed in torch ops, so it can be exported into the ONNX graph.

Mirrors mmpose 1.x ``get_heatmap_maximum`` + ``refine_keypoints_dark(blur_kernel_size=k)``:

1. integer maximum per heatmap (first index on ties), score = maximum value; a maximum ``<= 0``
   gives location ``(-1, -1)`` and no refinement;
2. blur each heatmap with the ``cv2.getGaussianKernel(k, 0)`` taps and **zero padding**
   (mmpose pads by ``(k-1)/2`` zeros before ``cv2.GaussianBlur``), rescale so the blurred map
   keeps the original maximum, clamp to ``>= 1e-10``, take ``log``;
3. at the integer maximum ``(x, y)``, when ``1 < x < W-2`` and ``1 < y < H-2``: central
   differences ``dx, dy`` (step 1), ``dxx, dyy`` (step 2, /4), ``dxy`` (diagonal, /4) and the
   Newton step ``-H^-1 g``; skipped when ``dxx*dyy - dxy^2 == 0``.

Coordinates are heatmap pixels with pixel centres at integer positions.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

#: (dy, dx) offsets of the 13 neighbours the Taylor step reads, in a fixed order.
_NEIGHBOURS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (0, 1), (0, -1), (1, 0), (-1, 0),
    (0, 2), (0, -2), (2, 0), (-2, 0),
    (1, 1), (-1, 1), (1, -1), (-1, -1),
)  # fmt: skip


def gaussian_taps(kernel: int) -> np.ndarray:
    """1-D taps ``cv2.GaussianBlur(ksize=(k, k), sigmaX=0)`` uses: ``(k,)`` float32."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"blur kernel: expected a positive odd size, got {kernel}")
    return cv2.getGaussianKernel(kernel, 0).astype(np.float32).ravel()


class DarkDecode(nn.Module):
    """``forward(heatmaps: (N, K, H, W) float32) -> keypoints (N, K, 3) float32`` = x, y
    (heatmap px), score (heatmap maximum)."""

    taps_x: torch.Tensor
    taps_y: torch.Tensor
    _neighbours_dy: torch.Tensor
    _neighbours_dx: torch.Tensor

    def __init__(self, num_keypoints: int, blur_kernel: int = 11) -> None:
        super().__init__()
        taps = torch.from_numpy(gaussian_taps(blur_kernel))
        self.num_keypoints = num_keypoints
        self.blur_kernel = blur_kernel
        # separable depthwise Gaussian: rows then columns (same sum as the 2-D kernel)
        self.register_buffer("taps_x", taps.view(1, 1, 1, -1).repeat(num_keypoints, 1, 1, 1))
        self.register_buffer("taps_y", taps.view(1, 1, -1, 1).repeat(num_keypoints, 1, 1, 1))
        # buffers (not in the state dict) so that .to(device) moves them with the module
        dy, dx = zip(*_NEIGHBOURS, strict=True)
        self.register_buffer("_neighbours_dy", torch.tensor(dy, dtype=torch.int64), False)
        self.register_buffer("_neighbours_dx", torch.tensor(dx, dtype=torch.int64), False)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        K, H, W = heatmaps.shape[1], heatmaps.shape[2], heatmaps.shape[3]
        r = self.blur_kernel // 2
        flat = heatmaps.flatten(2)  # (N, K, H*W)
        vals, idx = torch.max(flat, dim=2)  # (N, K)
        x = torch.remainder(idx, W)
        y = torch.div(idx, W, rounding_mode="floor")

        blurred = F.conv2d(heatmaps, self.taps_x, padding=(0, r), groups=K)
        blurred = F.conv2d(blurred, self.taps_y, padding=(r, 0), groups=K)
        bmax = blurred.flatten(2).amax(dim=2)
        scale = vals / torch.where(bmax == 0, torch.ones_like(bmax), bmax)
        logh = torch.log(torch.clamp(blurred * scale[..., None, None], min=1e-10))

        # gather the 13 neighbours from a 2-px padded copy (border cases are masked below)
        padded = F.pad(logh, (2, 2, 2, 2)).flatten(2)  # (N, K, (H+4)*(W+4))
        wp = W + 4
        offs = self._neighbours_dy * wp + self._neighbours_dx  # (13,) folded to a constant
        centre = (y + 2) * wp + (x + 2)  # (N, K)
        nb = torch.gather(padded, 2, centre.unsqueeze(-1) + offs)  # (N, K, 13)
        c, xp1, xm1, yp1, ym1, xp2, xm2, yp2, ym2, pp, mp, pm, mm = nb.unbind(-1)
        dx = 0.5 * (xp1 - xm1)
        dy = 0.5 * (yp1 - ym1)
        dxx = 0.25 * (xp2 - 2 * c + xm2)
        dyy = 0.25 * (yp2 - 2 * c + ym2)
        # names: (dy, dx) signs; pp = (y+1, x+1), mp = (y-1, x+1), pm = (y+1, x-1), mm = (y-1, x-1)
        dxy = 0.25 * (pp - mp - pm + mm)
        det = dxx * dyy - dxy * dxy
        inside = (x > 1) & (x < W - 2) & (y > 1) & (y < H - 2) & (vals > 0)
        ok = inside & (det != 0)
        safe = torch.where(ok, det, torch.ones_like(det))
        zero = torch.zeros_like(det)
        off_x = torch.where(ok, -(dyy * dx - dxy * dy) / safe, zero)
        off_y = torch.where(ok, -(dxx * dy - dxy * dx) / safe, zero)

        fx = x.to(heatmaps.dtype) + off_x
        fy = y.to(heatmaps.dtype) + off_y
        neg = torch.full_like(fx, -1.0)
        fx = torch.where(vals > 0, fx, neg)
        fy = torch.where(vals > 0, fy, neg)
        return torch.stack([fx, fy, vals], dim=-1)


class DecodedPoseNet(nn.Module):
    """A heatmap network followed by :class:`DarkDecode`:
    ``x: (N, 3, H, W) -> keypoints (N, K, 3)``."""

    def __init__(self, net: nn.Module, decoder: DarkDecode) -> None:
        super().__init__()
        self.net = net
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.net(x))
