"""One-Euro smoothing (Casiez et al., CHI 2012) of a fixed-shape signal, frame-rate aware.

Used by :mod:`darkpose.service.core.tracking` on each track's keypoints: speeds in box
diagonals per second (one ``beta`` fits persons of any size), and the speed of the pose's centre
opens the cutoff of all its keypoints.
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
    speeds in diagonals/s); ``centre`` (optional, e.g. (2,) the weighted mean of keypoints):
    a point whose speed opens the cutoff of every element, so that a whole pose that moves
    (a walking person, a panning camera) is followed without lag while its keypoints' noise,
    which averages out in the centre, is smoothed.  The first sample is returned unchanged.
    A constant signal stays exactly constant.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
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
        if c is not None and self._c is not None and self._dc is not None:
            dc_hat = self._dc + a_d * ((c - self._c) / dt - self._dc)
            speed = np.maximum(speed, float(np.linalg.norm(dc_hat)))
            self._c, self._dc = c, dc_hat
        a = _alpha(self.min_cutoff + self.beta * speed / max(float(scale), 1e-9), dt)
        out = self._x + a * (value - self._x)  # x_prev + a (x - x_prev): exact for constant x
        self._x, self._dx = out, dx_hat
        return out.copy()
