"""DARK's Newton step at the 13 points around each maximum, without blurring whole maps.

The fast path of :func:`darkpose.service.core.codec.decode_heatmaps` (``method="dark"``): the
Newton step needs the modulated log-map at 13 points around the maximum only.  The blur is a
zero-padded convolution, so :class:`RegularBlur` gathers a ``(2r+5)^2`` window
(``r = (blur_kernel-1)//2``) around each maximum (positions -> window starts from per-(H, W)
tables, one fancy index of whole window rows per block of ~128 maps, right after their argmax)
and computes the 13 blurred values with one GEMM against the 2-D kernel weights of those points;
:func:`blurred_points` redoes the windows clamped at a map border with the separable Toeplitz
matrices of their offset.  :func:`newton_offsets` is the step itself.  The per-map rescale and
the exact fallback stay in :mod:`darkpose.service.core.codec`.

Coordinates are heatmap pixels with pixel centres at integer positions; ``(x, y)`` order.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK",
    "PT_DX",
    "PT_DY",
    "PT_NAMES",
    "RegularBlur",
    "blurred_points",
    "dark_tables",
    "newton_offsets",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# The 13 points of the 5x5 block (centre (2, 2)) the Newton step reads, as (row=y, col=x).
_PTS = {
    "c": (2, 2),
    "xp1": (2, 3),
    "xm1": (2, 1),
    "xp2": (2, 4),
    "xm2": (2, 0),
    "yp1": (3, 2),
    "ym1": (1, 2),
    "yp2": (4, 2),
    "ym2": (0, 2),
    "pp": (3, 3),
    "pm": (1, 3),  # y-1, x+1
    "mp": (3, 1),  # y+1, x-1
    "mm": (1, 1),
}
PT_NAMES = tuple(_PTS)
PT_DY = np.array([r - 2 for r, _ in _PTS.values()], dtype=np.intp)
PT_DX = np.array([c - 2 for _, c in _PTS.values()], dtype=np.intp)
# Same points in a row-major 5x5 block.
_PT_FLAT = np.array([r * 5 + c for r, c in _PTS.values()], dtype=np.intp)
#: Windows per BLAS call in the fast path: 128 x 225 x 13 multiply-adds stays under OpenBLAS'
#: multi-threading threshold, so each call runs on one thread (threaded BLAS on these small
#: GEMMs took 20-60 ms instead of 0.2 ms when the cores were busy).
BLOCK = 128


@functools.lru_cache(maxsize=32)
def _gaussian_taps(kernel: int) -> F64:
    """The taps cv2.GaussianBlur(ksize=(k, k), sigma=0) uses on float32 images, as float64."""
    taps = cv2.getGaussianKernel(kernel, 0, cv2.CV_32F).reshape(-1)
    return taps.astype(np.float64)


@functools.lru_cache(maxsize=64)
def _toeplitz_table(kernel: int, size: int, dtype: type = np.float64) -> np.ndarray:
    """(size, 5, size) table T[o, d, j]: weight of window element j for output ``d - 2``
    relative to the keypoint, when the keypoint sits at offset ``o`` inside the window.

    Zero padding is implicit: window elements outside the kernel's reach get weight 0 and
    out-of-map positions are simply not in the window.
    """
    g = _gaussian_taps(kernel)
    r = (kernel - 1) // 2
    o = np.arange(size)[:, None, None]
    d = np.arange(5)[None, :, None] - 2
    j = np.arange(size)[None, None, :]
    tap = j - (o + d) + r
    valid = (tap >= 0) & (tap <= 2 * r)
    table: np.ndarray = np.where(valid, g[np.clip(tap, 0, 2 * r)], 0.0).astype(dtype)
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=32)
def dark_tables(H: int, W: int, kernel: int) -> tuple[np.ndarray, ...]:
    """Per maximum position ``p = y*W + x`` (arrays of H*W): Newton step applies (mmpose's
    ``1 < x < W-2 and 1 < y < H-2``), window start ``y0*W + x0`` (window clamped into the
    map), window not clamped (regular), and the keypoint's offsets ``oy``, ``ox`` inside it."""
    r = (kernel - 1) // 2
    full = 2 * r + 5
    Sy, Sx = min(full, H), min(full, W)
    ys, xs = np.divmod(np.arange(H * W, dtype=np.intp), W)
    y0 = np.clip(ys - (r + 2), 0, H - Sy)
    x0 = np.clip(xs - (r + 2), 0, W - Sx)
    newton = (xs > 1) & (xs < W - 2) & (ys > 1) & (ys < H - 2)
    regular = (ys - y0 == r + 2) & (xs - x0 == r + 2) & (Sy == full) & (Sx == full)
    tables = (newton, y0 * W + x0, regular, ys - y0, xs - x0)
    for t in tables:
        t.setflags(write=False)
    return tables


def _window_view(flat: np.ndarray, W: int, Sy: int, Sx: int) -> np.ndarray:
    """Strided view ``v`` of ``flat`` (M, H*W) with ``v[p]`` = the ``Sy`` window rows starting at
    flat element offset ``p``, each row (``Sx`` contiguous values) one item of a void dtype:
    one fancy index ``v[starts]`` copies whole rows (~25% faster than fancy indexing a
    strided view of scalars)."""
    base = flat.reshape(-1)
    item = base.itemsize
    n = base.size - ((Sy - 1) * W + Sx) + 1
    view: np.ndarray = np.ndarray(
        shape=(n, Sy),
        dtype=np.dtype((np.void, item * Sx)),
        buffer=base,
        strides=(item, item * W),
    )
    return view


class RegularBlur:
    """Per chunk of maps (called by the codec's argmax pass right after the chunk's argmax, so
    the windows are read from cache): gathers the ``(2r+5)^2`` window around each maximum and
    writes the zero-padded blur (no rescale) at the 13 Newton points into ``out`` (M, 13), in
    ``PT_NAMES`` order, by one GEMM against the 2-D weights of those points.  Correct where the
    window is not clamped at a map border (``regular``); the others are redone by
    :func:`blurred_points`.  Arithmetic in float32 for float16/32 input, float64 for float64.
    """

    def __init__(self, flat: np.ndarray, H: int, W: int, kernel: int) -> None:
        full = kernel + 4
        self.work: type = np.float64 if flat.dtype == np.float64 else np.float32
        self.full_windows = min(H, W) >= full
        self.dtype = flat.dtype
        self.view = _window_view(flat, W, min(full, H), min(full, W))
        self.start_tab = dark_tables(H, W, kernel)[1]
        self.rowbase = np.arange(0, flat.shape[0] * H * W, H * W)
        self.weights = _point_weights(kernel, self.work)
        self.out = np.empty((flat.shape[0], 13), self.work)
        self.size = full * full
        self.done = 0

    def __call__(self, s: int, e: int, idx: I64) -> None:
        """Maps ``[0, e)`` have their argmax in ``idx``; blurs in blocks of about ``BLOCK``
        maps (fewer numpy calls than per chunk; the block's last chunks are still in cache)."""
        e = min(e, self.out.shape[0])
        # Blur now if another chunk would make the block exceed BLOCK maps.
        if self.full_windows and (e == self.out.shape[0] or 2 * e - s - self.done > BLOCK):
            self._blur(self.done, e, idx)

    def _blur(self, s: int, e: int, idx: I64) -> None:
        starts = self.start_tab[idx[s:e]]
        starts += self.rowbase[s:e]
        win = self.view[starts].view(self.dtype).reshape(-1, self.size)
        win = win.astype(self.work, copy=False)
        for i in range(0, e - s, BLOCK):  # one block unless a chunk exceeds BLOCK maps
            j = min(i + BLOCK, e - s)
            np.matmul(win[i:j], self.weights, out=self.out[s + i : s + j])
        self.done = e


def blurred_points(
    flat: np.ndarray, idx: I64, eligible: np.ndarray, H: int, W: int, kernel: int, B: np.ndarray
) -> np.ndarray:
    """Completes ``B`` (M, 13) from :class:`RegularBlur` where the window around the maximum
    is clamped into the map (maps at a border, or smaller than the window): the clamped window
    is blurred separably with the Toeplitz matrices of the keypoint's offset inside it (which
    supply the zero padding).  Returns (13, M), meaningful where ``eligible``."""
    r = (kernel - 1) // 2
    full = 2 * r + 5
    Sy, Sx = min(full, H), min(full, W)
    _, start_tab, regular_tab, oy_tab, ox_tab = dark_tables(H, W, kernel)
    if Sy == full and Sx == full:
        ii = np.flatnonzero(eligible & ~regular_tab[idx])
    else:
        ii = np.flatnonzero(eligible)
    if ii.size:
        work: type = np.float64 if B.dtype == np.float64 else np.float32
        sub = idx[ii]
        starts = start_tab[sub] + ii * (H * W)
        wi = _window_view(flat, W, Sy, Sx)[starts].view(flat.dtype).reshape(ii.size, Sy, Sx)
        # A[s, j, c] = sum_i win[s, j, i] tx[ox_s, c, i];
        # D[s, d, c] = sum_j ty[oy_s, d, j] A[s, j, c]  (all operands contiguous).
        txt = np.ascontiguousarray(_toeplitz_table(kernel, Sx, work).transpose(0, 2, 1))
        ty = _toeplitz_table(kernel, Sy, work)  # (Sy, 5[d], Sy[j])
        A = np.matmul(wi.astype(work, copy=False), txt[ox_tab[sub]])  # (n, Sy, 5[c])
        D = np.matmul(ty[oy_tab[sub]], A)  # (n, 5[d], 5[c])
        B[ii] = D.reshape(ii.size, 25)[:, _PT_FLAT]
    # (13, M) C-contiguous: reductions over the 13 points and the Newton step then run on
    # contiguous rows (a min over a 13-wide inner axis measured 10x slower).
    return np.ascontiguousarray(B.T)


@functools.lru_cache(maxsize=32)
def _point_weights(kernel: int, dtype: type) -> np.ndarray:
    """(S*S, 13) weights, S = kernel + 4: blurred value at each Newton point from a window
    centred on the keypoint (regular offset), in ``PT_NAMES`` order."""
    full = kernel + 4
    t = _toeplitz_table(kernel, full)[(kernel - 1) // 2 + 2]  # (5[d or c], full)
    w = np.einsum("pj,pi->pji", t[PT_DY + 2], t[PT_DX + 2]).reshape(13, full * full)
    weights: np.ndarray = np.ascontiguousarray(w.T, dtype=dtype)
    weights.setflags(write=False)
    return weights


def newton_offsets(L: F64) -> tuple[F64, np.ndarray]:
    """One Newton step from log values L (13, S) at ``PT_NAMES``; returns ((2, S) offsets,
    (S,) mask of applied steps: Hessian not singular and step finite).  Columns may hold
    garbage (-inf/NaN from maps the step does not apply to): no warnings, masked by the
    caller."""
    p = dict(zip(PT_NAMES, L, strict=True))
    off = np.empty((2, L.shape[1]))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c2 = 2.0 * p["c"]
        dx = 0.5 * (p["xp1"] - p["xm1"])
        dy = 0.5 * (p["yp1"] - p["ym1"])
        dxx = 0.25 * (p["xp2"] - c2 + p["xm2"])
        dyy = 0.25 * (p["yp2"] - c2 + p["ym2"])
        dxy = 0.25 * (p["pp"] - p["pm"] - p["mp"] + p["mm"])
        det = dxx * dyy - dxy * dxy
        ok = det != 0
        neg_inv_det = -1.0 / np.where(ok, det, 1.0)
        np.multiply(dyy * dx - dxy * dy, neg_inv_det, out=off[0])
        np.multiply(dxx * dy - dxy * dx, neg_inv_det, out=off[1])
    ok &= np.isfinite(off).all(axis=0)
    return off, ok
