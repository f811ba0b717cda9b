"""Heatmap codec: exact, vectorised DARK / standard / argmax decoding and Gaussian encoding.

Coordinates are heatmap pixels with **pixel centres at integer positions**; ``(x, y)`` order.

Decoding reproduces mmpose 1.3.2 (``get_heatmap_maximum`` + ``refine_keypoints`` /
``refine_keypoints_dark``), the reference the golden fixture was made with, without any Python
loop over instances or keypoints:

* ``argmax``: first maximum of the flattened ``H*W`` map; where the maximum is ``<= 0`` the
  location is ``(-1, -1)`` and no refinement is applied.
* ``standard``: quarter-pixel shift towards the higher neighbour (HRNet / mmpose, including
  mmpose's border conditions ``1 < x < W-1`` and ``1 < y < H-1``).
* ``dark``: Gaussian modulation (zero-padded ``cv2.GaussianBlur`` with kernel ``blur_kernel``
  and cv2's default sigma for that size, then each map rescaled so that its maximum is
  unchanged), ``log(max(map, 1e-10))``, first/second derivatives by central differences and one
  Newton step, skipped at borders (``1 < x < W-2 and 1 < y < H-2``) and where the Hessian is
  singular.

Speed: the maps are read in chunks of ~512 KiB: an argmax on the signed-integer view of the
floats (same result where the maximum is > 0, faster than the float argmax) and, while the
chunk is in cache, the non-finite check (an unsigned max: -inf/negative NaNs are the largest
patterns; +inf/positive NaNs show up in the integer argmax maxima).  The Newton step needs the
modulated log-map at 13 points around the maximum only.  The blur is a zero-padded convolution,
so the fast path gathers a ``(2r+5)^2`` window (``r = (blur_kernel-1)//2``) around each maximum
(positions -> window starts from per-(H, W) tables, one fancy index of whole window rows per
block of ~128 maps, right after their argmax) and computes the 13 blurred values with one GEMM
against the 2-D kernel weights of those points; windows clamped at a map border use the
separable Toeplitz matrices of their offset instead.  The per-map rescale is a constant after
``log`` and cancels in every difference, unless the ``1e-10`` clamp bites; maps where it could
(or where the blurred values are so small relative to the peak that cv2's float32 rounding
decides the result) go through an exact fallback that blurs the whole map with cv2 exactly as
mmpose does.  Deviation from mmpose: a Newton step that is not finite (mmpose would return
NaN/inf) is skipped.  ``bench/decode.py`` measures it; docs/benchmarks.md "Decoding" has figures.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InputError, InvalidParameter

__all__ = [
    "BLUR_KERNEL_MIN",
    "DECODERS",
    "Decoder",
    "check_blur_kernel",
    "check_decode_method",
    "decode_heatmaps",
    "encode_heatmaps",
    "gaussian_blur_heatmaps",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
#: mmpose's clamp before ``log``.
_LOG_EPS = 1e-10
#: Fast path only where every needed blurred value is at least this fraction of the map's
#: maximum (and above the clamp with margin): there the clamp cannot bite and float32 rounding
#: in cv2 is far below the 1e-4 px parity budget.
_FAST_REL = 1e-5
_FAST_ABS = 4 * _LOG_EPS

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
_PT_NAMES = tuple(_PTS)
_PT_DY = np.array([r - 2 for r, _ in _PTS.values()], dtype=np.intp)
_PT_DX = np.array([c - 2 for _, c in _PTS.values()], dtype=np.intp)
# Same points in a row-major 5x5 block.
_PT_FLAT = np.array([r * 5 + c for r, c in _PTS.values()], dtype=np.intp)
#: Windows per BLAS call in the fast path: 128 x 225 x 13 multiply-adds stays under OpenBLAS'
#: multi-threading threshold, so each call runs on one thread (threaded BLAS on these small
#: GEMMs took 20-60 ms instead of 0.2 ms when the cores were busy).
_BLOCK = 128
#: Rows per chunk of the argmax + non-finite check passes: the second pass reads the chunk
#: from L2 instead of memory.
_CHUNK_BYTES = 512 * 1024


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


#: The smallest DARK blur kernel (sizes are odd: ``BLUR_KERNEL_MIN``, ``BLUR_KERNEL_MIN + 2``, ...).
BLUR_KERNEL_MIN = 1


def check_blur_kernel(blur_kernel: Any, what: str = "blur_kernel") -> int:
    """``blur_kernel`` as an int when it is an odd integer >= :data:`BLUR_KERNEL_MIN` (the one
    rule of the blur kernel: settings, cards, options and the API read it), else
    :class:`InvalidParameter`."""
    if isinstance(blur_kernel, bool) or not isinstance(blur_kernel, int | np.integer):
        raise InvalidParameter(
            f"{what}: expected an odd integer >= {BLUR_KERNEL_MIN}, got "
            f"{type(blur_kernel).__name__} {blur_kernel!r}"
        )
    k = int(blur_kernel)
    if k < BLUR_KERNEL_MIN or k % 2 == 0:
        raise InvalidParameter(f"{what}: expected an odd integer >= {BLUR_KERNEL_MIN}, got {k}")
    return k


def _as_heatmaps(heatmaps: Any, ndim: int | None = 4) -> np.ndarray:
    arr = np.asarray(heatmaps)
    if ndim is not None and arr.ndim != ndim:
        raise InputError(
            f"heatmaps: expected a {ndim}-D array (N, K, H, W), got shape {arr.shape} "
            f"({arr.ndim}-D)"
        )
    if arr.dtype.type not in _FLOAT_DTYPES:
        raise InputError(f"heatmaps: expected float16/float32/float64, got dtype {arr.dtype}")
    return arr


def _raise_nonfinite(flat: np.ndarray, shape: tuple[int, ...]) -> None:
    bad = ~np.isfinite(flat)
    first = int(np.flatnonzero(bad.ravel())[0])
    pos = np.unravel_index(first, shape)
    value = flat.ravel()[first]
    raise InputError(
        f"heatmaps: expected finite values, got {int(bad.sum())} non-finite value(s), first "
        f"{value} at (n, k, y, x) = {tuple(int(p) for p in pos)}"
    )


def _argmax_checked(
    flat: np.ndarray,
    shape: tuple[int, ...],
    on_chunk: Callable[[int, int, I64], None] | None = None,
) -> tuple[I64, np.ndarray]:
    """First maximum of each row of ``flat`` (M, H*W) and its value; raises
    :class:`InputError` on any NaN/+-inf.

    Two passes per chunk of rows, the second while the chunk is still in cache:

    * ``argmax`` on the signed-integer view: for IEEE floats of one sign the bit patterns order
      like the values, and every negative float is a negative integer, so wherever the row's
      maximum is ``> 0`` the integer argmax is the float argmax (ties included: equal positive
      floats have equal bits).  It is faster than the float argmax (no NaN bookkeeping).  Rows
      whose maximum is ``<= 0`` (rare; decoded as ``(-1, -1)``) are redone with the float
      argmax for their exact first maximum.  +inf and positive NaNs are the largest integers,
      so they show up in the maxima.
    * ``max`` of the unsigned view: -inf and negative NaNs are exactly the patterns
      ``>= bits(-inf)``, the largest unsigned values.

    ``on_chunk(start, stop, idx)`` runs after each chunk's argmax (``idx[:stop]`` filled), while
    the chunk is in cache (``idx`` may still be wrong where a maximum is ``<= 0``).
    """
    M, HW = flat.shape
    size = flat.dtype.itemsize
    sview = flat.view(f"i{size}")
    uview = flat.view(f"u{size}")
    neg_nonfinite = np.array(-np.inf, flat.dtype).view(f"u{size}")[()]
    idx = np.empty(M, np.intp)
    bad = False
    step = max(1, min(_BLOCK, _CHUNK_BYTES // (HW * size)))
    for s in range(0, M, step):
        e = s + step
        sview[s:e].argmax(axis=1, out=idx[s:e])
        bad |= bool(uview[s:e].max() >= neg_nonfinite)
        if on_chunk is not None:
            on_chunk(s, e, idx)
    rows = np.arange(0, M * HW, HW)
    vals = flat.reshape(-1)[rows + idx]
    if bad or not np.isfinite(vals).all():
        _raise_nonfinite(flat, shape)
    nonpos = np.flatnonzero(~(vals > 0))
    if nonpos.size:
        idx[nonpos] = flat[nonpos].argmax(axis=1)
        vals[nonpos] = flat[nonpos, idx[nonpos]]
    return idx, vals


# ----------------------------------------------------------------------------------------------
# Gaussian modulation
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _gaussian_taps(kernel: int) -> F64:
    """The taps cv2.GaussianBlur(ksize=(k, k), sigma=0) uses on float32 images, as float64."""
    taps = cv2.getGaussianKernel(kernel, 0, cv2.CV_32F).reshape(-1)
    return taps.astype(np.float64)


def gaussian_blur_heatmaps(heatmaps: Any, kernel: int = 11) -> F32:
    """mmpose's DARK modulation of every map, vectorised (one cv2 call for all maps).

    heatmaps: (..., H, W) float; returns the same shape, float32: each map zero-padded by
    ``(kernel-1)//2``, blurred by ``cv2.GaussianBlur((kernel, kernel), 0)``, cropped back and
    multiplied by ``orig_max / blurred_max`` (computed in float32 as mmpose does; a map whose
    blurred maximum is 0 yields inf/NaN exactly like mmpose).
    """
    k = check_blur_kernel(kernel)
    arr = _as_heatmaps(heatmaps, ndim=None)
    if arr.ndim < 2:
        raise InputError(f"heatmaps: expected at least 2 dims (..., H, W), got shape {arr.shape}")
    *lead, H, W = arr.shape
    if H == 0 or W == 0:
        raise InputError(f"heatmaps: expected non-empty maps, got H={H}, W={W}")
    maps = arr.reshape(-1, H, W).astype(np.float32, copy=False)
    n = maps.shape[0]
    if n == 0:
        return np.zeros(arr.shape, np.float32)
    r = (k - 1) // 2
    # Maps stacked vertically with r zero rows after each: one cv2 call; BORDER_CONSTANT(0)
    # equals mmpose's explicit zero padding (the kernel never reaches beyond r zero rows).
    tall = np.zeros((n, H + r, W), np.float32)
    tall[:, :H] = maps
    blurred = cv2.GaussianBlur(
        tall.reshape(n * (H + r), W), (k, k), 0, borderType=cv2.BORDER_CONSTANT
    ).reshape(n, H + r, W)[:, :H]
    orig_max = maps.reshape(n, -1).max(axis=1)
    blur_max = blurred.reshape(n, -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = (orig_max / blur_max).astype(np.float32)
        out = blurred * scale[:, None, None]
    return np.ascontiguousarray(out, dtype=np.float32).reshape(arr.shape)


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
def _dark_tables(H: int, W: int, kernel: int) -> tuple[np.ndarray, ...]:
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


class _RegularBlur:
    """Per chunk of maps (called by :func:`_argmax_checked` right after the chunk's argmax, so
    the windows are read from cache): gathers the ``(2r+5)^2`` window around each maximum and
    writes the zero-padded blur (no rescale) at the 13 Newton points into ``out`` (M, 13), in
    ``_PT_NAMES`` order, by one GEMM against the 2-D weights of those points.  Correct where the
    window is not clamped at a map border (``regular``); the others are redone by
    :func:`_blurred_points`.  Arithmetic in float32 for float16/32 input, float64 for float64.
    """

    def __init__(self, flat: np.ndarray, H: int, W: int, kernel: int) -> None:
        full = kernel + 4
        self.work: type = np.float64 if flat.dtype == np.float64 else np.float32
        self.full_windows = min(H, W) >= full
        self.dtype = flat.dtype
        self.view = _window_view(flat, W, min(full, H), min(full, W))
        self.start_tab = _dark_tables(H, W, kernel)[1]
        self.rowbase = np.arange(0, flat.shape[0] * H * W, H * W)
        self.weights = _point_weights(kernel, self.work)
        self.out = np.empty((flat.shape[0], 13), self.work)
        self.size = full * full
        self.done = 0

    def __call__(self, s: int, e: int, idx: I64) -> None:
        """Maps ``[0, e)`` have their argmax in ``idx``; blurs in blocks of about ``_BLOCK``
        maps (fewer numpy calls than per chunk; the block's last chunks are still in cache)."""
        e = min(e, self.out.shape[0])
        # Blur now if another chunk would make the block exceed _BLOCK maps.
        if self.full_windows and (e == self.out.shape[0] or 2 * e - s - self.done > _BLOCK):
            self._blur(self.done, e, idx)

    def _blur(self, s: int, e: int, idx: I64) -> None:
        starts = self.start_tab[idx[s:e]]
        starts += self.rowbase[s:e]
        win = self.view[starts].view(self.dtype).reshape(-1, self.size)
        win = win.astype(self.work, copy=False)
        for i in range(0, e - s, _BLOCK):  # one block unless a chunk exceeds _BLOCK maps
            j = min(i + _BLOCK, e - s)
            np.matmul(win[i:j], self.weights, out=self.out[s + i : s + j])
        self.done = e


def _blurred_points(
    flat: np.ndarray, idx: I64, eligible: np.ndarray, H: int, W: int, kernel: int, B: np.ndarray
) -> np.ndarray:
    """Completes ``B`` (M, 13) from :class:`_RegularBlur` where the window around the maximum
    is clamped into the map (maps at a border, or smaller than the window): the clamped window
    is blurred separably with the Toeplitz matrices of the keypoint's offset inside it (which
    supply the zero padding).  Returns (13, M), meaningful where ``eligible``."""
    r = (kernel - 1) // 2
    full = 2 * r + 5
    Sy, Sx = min(full, H), min(full, W)
    _, start_tab, regular_tab, oy_tab, ox_tab = _dark_tables(H, W, kernel)
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
    centred on the keypoint (regular offset), in ``_PT_NAMES`` order."""
    full = kernel + 4
    t = _toeplitz_table(kernel, full)[(kernel - 1) // 2 + 2]  # (5[d or c], full)
    w = np.einsum("pj,pi->pji", t[_PT_DY + 2], t[_PT_DX + 2]).reshape(13, full * full)
    weights: np.ndarray = np.ascontiguousarray(w.T, dtype=dtype)
    weights.setflags(write=False)
    return weights


def _log_points_exact(
    flat: np.ndarray, m: I64, xs: I64, ys: I64, H: int, W: int, kernel: int
) -> F64:
    """mmpose's exact modulated log-map (full cv2 blur, rescale, clamp, log; float32) of maps
    ``m`` at the 13 Newton points; (13, S) float64."""
    maps = flat[m].reshape(-1, H, W)
    mod = gaussian_blur_heatmaps(maps, kernel)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.maximum(mod, np.float32(_LOG_EPS), out=mod)
        np.log(mod, out=mod)
    rows = ys[:, None] + _PT_DY[None, :]
    cols = xs[:, None] + _PT_DX[None, :]
    idx = np.arange(len(m))[:, None] * (H * W) + rows * W + cols
    return mod.reshape(-1)[idx].T.astype(np.float64)


def _newton_offsets(L: F64) -> tuple[F64, np.ndarray]:
    """One Newton step from log values L (13, S) at ``_PT_NAMES``; returns ((2, S) offsets,
    (S,) mask of applied steps: Hessian not singular and step finite).  Columns may hold
    garbage (-inf/NaN from maps the step does not apply to): no warnings, masked by the
    caller."""
    p = dict(zip(_PT_NAMES, L, strict=True))
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


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------


#: A decoder: validated heatmaps (N, K, H, W) (any float dtype) and an odd blur kernel →
#: coords (N, K, 2) float32 heatmap px, scores (N, K) float32.
Decoder = Callable[[npt.NDArray[Any], int], tuple[F32, F32]]


def decode_heatmaps(heatmaps: Any, method: str = "dark", blur_kernel: int = 11) -> tuple[F32, F32]:
    """Decode keypoints from heatmaps with the decoder ``method`` of :data:`DECODERS`.

    heatmaps: (N, K, H, W) float32 (float16/float64 and non-contiguous arrays accepted; the
    argmax runs on the input dtype so ties behave as the input).
    method: a key of :data:`DECODERS` (``"argmax"`` | ``"standard"`` | ``"dark"``);
    blur_kernel: odd >= 1 (dark only, but always validated).

    Returns ``coords`` (N, K, 2) float32 (x, y) in heatmap pixels (pixel centres at integer
    positions; ``(-1, -1)`` where the map's maximum is <= 0) and ``scores`` (N, K) float32, the
    maxima.  Raises :class:`InputError` for a wrong ndim/dtype, empty maps or any NaN/+-inf,
    :class:`InvalidParameter` for an unknown method or a bad kernel.
    """
    decoder = DECODERS[check_decode_method(method, "method")]
    kernel = check_blur_kernel(blur_kernel)
    return decoder(_as_heatmaps(heatmaps), kernel)


def _decode_max(method: str) -> Decoder:
    """The argmax-based decoders of mmpose: argmax, + quarter-pixel shift, + DARK."""

    def decode(arr: npt.NDArray[Any], kernel: int) -> tuple[F32, F32]:
        return _decode_builtin(arr, method, kernel)

    decode.__name__ = f"decode_{method}"
    return decode


def _decode_builtin(arr: npt.NDArray[Any], method: str, kernel: int) -> tuple[F32, F32]:
    N, K, H, W = arr.shape
    if N == 0 or K == 0:
        return np.zeros((N, K, 2), np.float32), np.zeros((N, K), np.float32)
    if H == 0 or W == 0:
        raise InputError(f"heatmaps: expected non-empty maps, got H={H}, W={W}")
    M = N * K
    # Native byte order: the argmax and the check work on integer views of the bits.
    flat = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("=")).reshape(M, H * W)
    blur = _RegularBlur(flat, H, W, kernel) if method == "dark" else None
    idx, vals = _argmax_checked(flat, arr.shape, blur)
    ys, xs = np.divmod(idx, W)
    positive = vals > 0
    locs = np.empty((M, 2), np.float64)
    locs[:, 0] = np.where(positive, xs, -1)
    locs[:, 1] = np.where(positive, ys, -1)

    if method == "standard":
        _refine_standard(flat, locs, xs, ys, positive, H, W)
    elif blur is not None:  # method == "dark"
        _refine_dark(flat, vals, locs, idx, positive, H, W, kernel, blur.out)

    coords = locs.astype(np.float32).reshape(N, K, 2)
    scores = vals.astype(np.float32).reshape(N, K)
    return coords, scores


def _refine_standard(
    flat: np.ndarray, locs: F64, xs: I64, ys: I64, positive: np.ndarray, H: int, W: int
) -> None:
    """In place: ``loc += sign(d) * 0.25`` with mmpose's conditions (x, y = int(loc))."""
    base = np.arange(flat.shape[0]) * (H * W) + ys * W + xs
    v = flat.reshape(-1)
    okx = positive & (xs > 1) & (xs < W - 1) & (ys > 0)
    oky = positive & (ys > 1) & (ys < H - 1) & (xs > 0)
    ix = np.flatnonzero(okx)
    iy = np.flatnonzero(oky)
    # Differences in the input dtype, as mmpose computes hm[y, x+1] - hm[y, x-1].
    ddx = v[base[ix] + 1] - v[base[ix] - 1]
    ddy = v[base[iy] + W] - v[base[iy] - W]
    locs[ix, 0] += np.sign(ddx).astype(np.float64) * 0.25
    locs[iy, 1] += np.sign(ddy).astype(np.float64) * 0.25


def _refine_dark(
    flat: np.ndarray,
    vals: np.ndarray,
    locs: F64,
    idx: I64,
    positive: np.ndarray,
    H: int,
    W: int,
    kernel: int,
    B: np.ndarray,
) -> None:
    """In place: mmpose's DARK Newton step where ``1 < x < W-2 and 1 < y < H-2``.

    Computed for every map (a map where the step does not apply costs one window, less than
    selecting the others would) and masked at the end."""
    eligible = positive & _dark_tables(H, W, kernel)[0][idx]
    if not eligible.any():
        return
    B = _blurred_points(flat, idx, eligible, H, W, kernel, B)  # (13, M)
    thr = np.maximum(vals * _FAST_REL, _FAST_ABS)
    fast = B.min(axis=0) >= thr
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log(B, dtype=np.float64)
    slow = np.flatnonzero(eligible & ~fast)
    if slow.size:
        logger.debug("DARK exact fallback for %d of %d maps", slow.size, idx.size)
        ys, xs = np.divmod(idx[slow], W)
        L[:, slow] = _log_points_exact(flat, slow, xs, ys, H, W, kernel)
    off, ok = _newton_offsets(L)
    ok &= eligible
    locs += np.where(ok, off, 0.0).T


# ----------------------------------------------------------------------------------------------
# encoding
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# the decoder table
# ----------------------------------------------------------------------------------------------

#: Every heatmap decoder by name (``DecodeMethod``): the API, the CLIs, the evaluation, the
#: settings and the model cards read this table.  Adding a decoder = a :data:`Decoder` function
#: plus one line here.
DECODERS: dict[str, Decoder] = {
    "argmax": _decode_max("argmax"),
    "standard": _decode_max("standard"),
    "dark": _decode_max("dark"),
}


def check_decode_method(method: Any, what: str = "decode") -> str:
    """``method`` when it names a decoder of :data:`DECODERS`, else :class:`InvalidParameter`."""
    if not isinstance(method, str) or method not in DECODERS:
        raise InvalidParameter(f"{what}: expected one of {', '.join(DECODERS)}, got {method!r}")
    return method
