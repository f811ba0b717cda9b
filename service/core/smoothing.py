"""One-Euro smoothing (Casiez et al., CHI 2012) of a fixed-shape signal, frame-rate aware.

Used by :mod:`darkpose.service.core.tracking` on each track's keypoints: speeds in box
diagonals per second (one ``beta`` fits persons of any size); the motion the keypoints share
(the median of their displacements: a walking person, a moving camera, a shaking hand-held
phone) moves the prediction of all of them, so it is followed without lag and only each
keypoint's own noise is smoothed; the shared speed and each keypoint's own speed (weighted by
``keypoint_speed``) open the cutoff.
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

    ``filter(x, dt, scale=1, shared=None)``: x any shape, float; dt seconds since the previous
    sample (> 0); ``scale`` divides the speeds before they open the cutoff (a box diagonal:
    speeds in diagonals/s).  Without ``shared`` it is the filter of Casiez et al.: each
    element's cutoff is ``min_cutoff + beta * |speed|``.  With ``shared`` ((D,) for x (K, D):
    the displacement all rows made together since the previous sample, e.g. a pose's median
    keypoint motion, :func:`~darkpose.service.core.association.keypoint_motion`), that motion is
    followed and the rows' own noise is smoothed:

    * prediction: ``shared`` moves every row's previous output, and each row is filtered
      around that prediction: a pose that translates (a walking person, a panning or shaking
      camera) is followed exactly;
    * cutoff: opened by the shared motion's (filtered) speed and by ``keypoint_speed`` × each
      row's own (filtered) speed relative to it (a limb that moves on a still body; the weight
      keeps the rows' own noise from opening the filter).

    The first sample is returned unchanged.  A constant signal stays exactly constant.
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
        self._x: F64 | None = None  # the previous output
        self._raw: F64 | None = None  # the previous input
        self._dx: F64 | None = None  # filtered speed (own speed, relative to ``shared``)
        self._dc: F64 | None = None  # filtered speed of ``shared``

    def reset(self) -> None:
        self._x = self._raw = self._dx = self._dc = None

    def filter(
        self,
        x: npt.ArrayLike,
        dt: float,
        scale: float = 1.0,
        shared: npt.ArrayLike | None = None,
    ) -> F64:
        value = np.asarray(x, np.float64)
        if self._x is None or self._raw is None or self._dx is None or self._x.shape != value.shape:
            self._x, self._raw = value.copy(), value.copy()
            self._dx = np.zeros_like(value)
            self._dc = None
            return value.copy()
        if not (dt > 0 and math.isfinite(dt)):
            raise InvalidParameter(f"dt: expected seconds > 0, got {dt!r}")
        a_d = _alpha(self.d_cutoff, dt)
        base = self._x
        if shared is None:
            self._dx = self._dx + a_d * ((value - self._x) / dt - self._dx)
            speed = np.abs(self._dx)
        else:
            t = np.asarray(shared, np.float64)
            dc = np.zeros_like(t) if self._dc is None or self._dc.shape != t.shape else self._dc
            self._dc = dc + a_d * (t / dt - dc)
            self._dx = self._dx + a_d * ((value - self._raw - t) / dt - self._dx)
            own = (
                np.abs(self._dx)
                if t.ndim == 0
                else np.linalg.norm(self._dx, axis=-1, keepdims=True)
            )
            speed = np.maximum(self.keypoint_speed * own, float(np.linalg.norm(self._dc)))
            base = self._x + t
        a = _alpha(self.min_cutoff + self.beta * speed / max(float(scale), 1e-9), dt)
        out = base + a * (value - base)  # base + a (x - base): exact for a constant x and base
        self._x, self._raw = out, value.copy()
        return out.copy()
