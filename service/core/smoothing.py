"""One-Euro smoothing (Casiez et al., CHI 2012) of a fixed-shape signal, frame-rate aware.

Used by :mod:`darkpose.service.core.tracking` on each track's keypoints: speeds in box
diagonals per second (one ``beta`` fits persons of any size); the pose's centre moves the
prediction of all its keypoints (no lag when the whole person or the camera moves) and its speed
opens their cutoff; each keypoint's own motion relative to the centre opens its cutoff too,
weighted by ``keypoint_speed``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidParameter

__all__ = ["OneEuroFilter"]

F64 = npt.NDArray[np.float64]


def _alpha(cutoff: F64 | float, dt: float) -> F64:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
    return np.asarray(1.0 / (1.0 + tau / dt), np.float64)


class OneEuroFilter:
    """One-Euro filter of a fixed-shape signal (e.g. keypoints (K, 2)).

    ``filter(x, dt, scale=1, centre=None)``: x any shape, float; dt seconds since the previous
    sample (> 0); ``scale`` divides the speeds before they open the cutoff (a box diagonal:
    speeds in diagonals/s).  Without ``centre`` it is the filter of Casiez et al.: each
    element's cutoff is ``min_cutoff + beta * |speed|``.  With ``centre`` ((D,), e.g. the
    weighted mean of (K, D) keypoints), the motion common to the whole signal is followed
    without lag and the elements' noise is smoothed:

    * prediction: each element is filtered around its previous output moved by the centre's
      (filtered) velocity × dt, so a signal that moves with its centre at a constant velocity
      is followed with a lag that vanishes as the velocity estimate settles (``d_cutoff``);
    * cutoff: opened by the centre's speed and by ``keypoint_speed`` × each row's speed
      relative to the centre (a limb that moves on a still body; the weight keeps the
      keypoints' own noise from opening the filter).

    The first sample is returned unchanged.  A constant signal with a still centre stays
    exactly constant.
    """

    def __init__(
        self,
        min_cutoff: float = 1.0,
        beta: float = 0.0,
        d_cutoff: float = 1.0,
        keypoint_speed: float = 1.0,
    ) -> None:
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.keypoint_speed = float(keypoint_speed)
        self._x: F64 | None = None
        self._dx: F64 | None = None
        self._c: F64 | None = None
        self._dc: F64 | None = None

    def reset(self) -> None:
        self._x = self._dx = self._c = self._dc = None

    def filter(
        self, x: npt.ArrayLike, dt: float, scale: float = 1.0, centre: npt.ArrayLike | None = None
    ) -> F64:
        value = np.asarray(x, np.float64)
        c = None if centre is None else np.asarray(centre, np.float64)
        if self._x is None or self._dx is None or self._x.shape != value.shape:
            self._x = value.copy()
            self._dx = np.zeros_like(value)
            self._c = None if c is None else c.copy()
            self._dc = None if c is None else np.zeros_like(c)
            return value.copy()
        if not (dt > 0 and math.isfinite(dt)):
            raise InvalidParameter(f"dt: expected seconds > 0, got {dt!r}")
        a_d = _alpha(self.d_cutoff, dt)
        dx_hat = self._dx + a_d * ((value - self._x) / dt - self._dx)
        speed = np.abs(dx_hat)
        base = self._x
        if c is not None and self._c is not None and self._dc is not None:
            dc_hat = self._dc + a_d * ((c - self._c) / dt - self._dc)
            rows = value.ndim >= 1 and value.shape[-1] == dc_hat.shape[-1]
            if rows:
                own = np.linalg.norm(dx_hat - dc_hat, axis=-1, keepdims=True)
                base = self._x + dc_hat * dt
            else:
                own = speed
            speed = np.maximum(self.keypoint_speed * own, float(np.linalg.norm(dc_hat)))
            self._c, self._dc = c, dc_hat
        a = _alpha(self.min_cutoff + self.beta * speed / max(float(scale), 1e-9), dt)
        out = base + a * (value - base)  # base + a (x - base): exact for a constant x and base
        self._x, self._dx = out, dx_hat
        return out.copy()
