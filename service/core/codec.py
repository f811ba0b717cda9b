"""Heatmap codec: exact, vectorised DARK / standard / argmax decoding (and the decoder table).

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
modulated log-map at 13 points around the maximum only: :mod:`darkpose.service.core.dark_points`
blurs a window around each maximum instead of the whole map.  The per-map rescale is a constant
after ``log`` and cancels in every difference, unless the ``1e-10`` clamp bites; maps where it
could (or where the blurred values are so small relative to the peak that cv2's float32 rounding
decides the result) go through an exact fallback that blurs the whole map with cv2 exactly as
mmpose does.  Deviation from mmpose: a Newton step that is not finite (mmpose would return
NaN/inf) is skipped.  ``bench/decode.py`` measures it; docs/benchmarks.md "Decoding" has figures.

Encoding (Gaussian target heatmaps) lives in :mod:`darkpose.service.core.heatmap_encoding`;
:func:`encode_heatmaps` is importable from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from darkpose.service.core.dark_points import (
    BLOCK,
    PT_DX,
    PT_DY,
    RegularBlur,
    blurred_points,
    dark_tables,
    newton_offsets,
)
from darkpose.service.core.errors import InputError, InvalidParameter
from darkpose.service.core.heatmap_encoding import encode_heatmaps

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
    step = max(1, min(BLOCK, _CHUNK_BYTES // (HW * size)))
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
    rows = ys[:, None] + PT_DY[None, :]
    cols = xs[:, None] + PT_DX[None, :]
    idx = np.arange(len(m))[:, None] * (H * W) + rows * W + cols
    return mod.reshape(-1)[idx].T.astype(np.float64)


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
    blur = RegularBlur(flat, H, W, kernel) if method == "dark" else None
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
    eligible = positive & dark_tables(H, W, kernel)[0][idx]
    if not eligible.any():
        return
    B = blurred_points(flat, idx, eligible, H, W, kernel, B)  # (13, M)
    thr = np.maximum(vals * _FAST_REL, _FAST_ABS)
    fast = B.min(axis=0) >= thr
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log(B, dtype=np.float64)
    slow = np.flatnonzero(eligible & ~fast)
    if slow.size:
        logger.debug("DARK exact fallback for %d of %d maps", slow.size, idx.size)
        ys, xs = np.divmod(idx[slow], W)
        L[:, slow] = _log_points_exact(flat, slow, xs, ys, H, W, kernel)
    off, ok = newton_offsets(L)
    ok &= eligible
    locs += np.where(ok, off, 0.0).T


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
