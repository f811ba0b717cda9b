"""Horizontal flip test (HRNet / SimpleBaseline style).

``flip_batch`` mirrors the network input along W; ``flip_heatmaps_back`` mirrors the heatmaps
of the flipped input back, swaps left/right keypoint channels and (``shift=True``) shifts them
right by one heatmap pixel, as HRNet's ``output_flipped[:, :, :, 1:] =
output_flipped.clone()[:, :, :, 0:-1]`` (column 0 keeps its value).  Why: the input is mirrored
on the input pixel grid (``u_in → W - 1 - u_in``, i.e. ``u → w - 1/stride - u`` in heatmap px
for ``stride = W / w``) while mirroring the heatmap maps ``u → w - 1 - u``; the two differ by
``1 - 1/stride`` heatmap px (0.75 for stride 4), which HRNet rounds to one pixel.
``fuse_flip`` averages the plain and the flipped-back heatmaps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidParameter

F32 = npt.NDArray[np.float32]

__all__ = ["flip_batch", "flip_heatmaps_back", "fuse_flip", "flip_permutation"]


def _check4(a: npt.ArrayLike, name: str, shape: str) -> npt.NDArray[np.floating]:
    arr = np.asarray(a)
    if arr.ndim != 4:
        raise InvalidParameter(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


def flip_permutation(
    num_keypoints: int, flip_pairs: Sequence[Sequence[int]]
) -> npt.NDArray[np.intp]:
    """Channel index map ``(K,)`` that swaps every (left, right) pair of ``flip_pairs``."""
    perm = np.arange(num_keypoints)
    for pair in flip_pairs:
        if len(pair) != 2:
            raise InvalidParameter(f"flip_pairs: expected (left, right) pairs, got {pair!r}")
        a, b = int(pair[0]), int(pair[1])
        if not (0 <= a < num_keypoints and 0 <= b < num_keypoints):
            raise InvalidParameter(
                f"flip_pairs: expected indices in [0, {num_keypoints}), got ({a}, {b})"
            )
        perm[a], perm[b] = b, a
    return perm


def flip_batch(batch: npt.ArrayLike) -> F32:
    """Mirror along W.  batch: (N, C, H, W) → (N, C, H, W) float32, C-contiguous copy."""
    b = _check4(batch, "batch", "(N, C, H, W)")
    return np.ascontiguousarray(b[..., ::-1], dtype=np.float32)


def flip_heatmaps_back(
    heatmaps: npt.ArrayLike, flip_pairs: Sequence[Sequence[int]], shift: bool = True
) -> F32:
    """Heatmaps of a flipped input → heatmaps in the original orientation.

    heatmaps: (N, K, H, W) → (N, K, H, W) float32: mirrored along W, left/right channels
    swapped, and with ``shift`` moved right by one pixel (``out[..., 1:] = out[..., :-1]``).
    """
    hm = _check4(heatmaps, "heatmaps", "(N, K, H, W)")
    perm = flip_permutation(hm.shape[1], flip_pairs)
    out = np.ascontiguousarray(hm[:, perm, :, ::-1], dtype=np.float32)
    if shift and out.shape[3] > 1:
        out[..., 1:] = out[..., :-1].copy()
    return out


def fuse_flip(heatmaps: npt.ArrayLike, heatmaps_flipped_back: npt.ArrayLike) -> F32:
    """Average of the plain and the flipped-back heatmaps, both (N, K, H, W) → float32."""
    a = _check4(heatmaps, "heatmaps", "(N, K, H, W)")
    b = _check4(heatmaps_flipped_back, "heatmaps_flipped_back", "(N, K, H, W)")
    if a.shape != b.shape:
        raise InvalidParameter(f"heatmaps: expected equal shapes, got {a.shape} and {b.shape}")
    return ((a.astype(np.float32) + b.astype(np.float32)) * np.float32(0.5)).astype(np.float32)
