"""Bounded work per request: a cancellable deadline, a memory budget and the memory estimate.

* :class:`Job` — the work of one ``POST /pose`` in its worker thread.  The event loop cancels
  it when the client disconnects or ``work_timeout_s`` has passed; the worker checks it between
  stages (before and after decoding, before the models, before rendering) and stops there.  A
  stage that has started runs to its end (C code cannot be interrupted), which is why the
  decoders' own cost is bounded before decoding (:mod:`darkpose.service.core.imageguard`).
* :class:`MemoryBudget` — admission by *estimated* memory (:func:`estimate_request_bytes`)
  against ``memory_budget_mb``: a request that does not fit while others hold the budget is
  refused with 503 + ``Retry-After``; one that could never fit is refused with 413.
"""

from __future__ import annotations

import threading
import time

from darkpose.service.core.errors import Overloaded, PayloadTooLarge
from darkpose.service.runtime.batching import current_job as current_job

MB = 1024 * 1024
#: Fixed part of every estimate: detector input and outputs, JSON, Python objects.
BASE_BYTES = 8 * MB


class DeadlineExceeded(Overloaded):
    """The request's work did not finish within ``work_timeout_s`` (HTTP 503 + Retry-After)."""

    code = "deadline_exceeded"


class JobCancelled(Exception):
    """The client of a job went away; the worker stops at its next check (no answer needed)."""


class Job:
    """Cancellation and deadline of one request's work (shared by loop and worker thread)."""

    def __init__(self, timeout_s: float, retry_after: float = 1.0) -> None:
        self.timeout_s = float(timeout_s)
        self.deadline = time.monotonic() + self.timeout_s
        self.retry_after = retry_after
        self._cancelled = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"request work: expected it done within {self.timeout_s:g} s "
            "(work_timeout_s), got more",
            retry_after=self.retry_after,
        )

    def error(self) -> Exception | None:
        """What :meth:`check` would raise now (None: go on)."""
        if self._cancelled.is_set():
            return JobCancelled(self.reason or "cancelled")
        if self.expired():
            return self.deadline_error()
        return None

    def check(self) -> None:
        """Raise :class:`JobCancelled` or :class:`DeadlineExceeded` when the work must stop."""
        err = self.error()
        if err is not None:
            raise err


#: ``current_job`` is the micro-batcher's (:mod:`darkpose.service.runtime.batching`): ``run_pose``
#: sets it to the request's :class:`Job` in its worker thread.


class MemoryBudget:
    """Bytes of estimated memory that admitted requests may hold at once."""

    def __init__(self, limit_bytes: int, retry_after: float = 1.0) -> None:
        self.limit = int(limit_bytes)
        self.retry_after = retry_after
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def reserve(self, nbytes: int) -> None:
        """Take ``nbytes`` or raise: :class:`PayloadTooLarge` when it exceeds the whole budget,
        :class:`Overloaded` when the budget is held by others now."""
        if nbytes > self.limit:
            raise PayloadTooLarge(
                f"estimated request memory: expected at most {self.limit // MB} MB "
                f"(memory_budget_mb), got {-(-nbytes // MB)} MB"
            )
        with self._lock:
            if self._used + nbytes > self.limit:
                used = self._used
                raise Overloaded(
                    f"memory budget: expected {-(-nbytes // MB)} MB free of "
                    f"{self.limit // MB} MB, got {(self.limit - used) // MB} MB free",
                    retry_after=self.retry_after,
                )
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - int(nbytes))


def _decoder_bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel PIL holds for a decoded image of ``mode``."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def estimate_request_bytes(
    width: int,
    height: int,
    mode: str,
    *,
    crops: int,
    crop_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    keypoints: int,
    models: int = 1,
    render_pixels: int = 0,
) -> int:
    """Peak bytes one request may hold: the decoder's image + one array copy + the BGR image
    (per pixel: PIL's 1-4 B + ≤ 4 B + 3 B), the pose crops (``crops`` × 3 × H × W float32, per
    distinct model input) and heatmaps (``crops`` × K × h × w float32 per model), the overlay
    (``render_pixels`` × 6 B: drawing copy + PNG buffer) and a fixed :data:`BASE_BYTES`.

    ``crops`` counts flipped crops too (2 × max_persons with flip).
    """
    px = int(width) * int(height)
    decode = px * (_decoder_bytes_per_pixel(mode) + 4 + 3)
    cw, ch = crop_size
    hw, hh = heatmap_size
    pose = crops * (3 * cw * ch * 4 + models * keypoints * hw * hh * 4)
    return BASE_BYTES + decode + pose + int(render_pixels) * 6
