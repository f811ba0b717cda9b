"""Bounded work per request: a cancellable deadline, a memory budget and the memory estimate.

* :class:`Job` — the work of one ``POST /pose`` in its worker thread.  The event loop cancels
  it when the client disconnects or ``work_timeout_s`` has passed; the worker checks it between
  stages (before and after decoding, before the models, before rendering) and stops there.  A
  stage that has started runs to its end (C code cannot be interrupted), which is why the
  decoders' own cost is bounded before decoding (:mod:`darkpose.service.core.imageguard`).
* :class:`MemoryBudget` — admission by *estimated* memory (:func:`estimate_request_cost`, every
  stage) against ``memory_budget_mb``: a request that does not fit while others hold the budget
  is refused with 503 + ``Retry-After``; one that could never fit is refused with 413 (the
  image) or 422 (``max_persons``).
* :class:`WorkHold` — a request's per-client slot (access control) stays held until the
  worker thread of its work has stopped, not merely until the client has gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from darkpose.service.core.errors import Overloaded, PayloadTooLarge
from darkpose.service.core.nms import DEFAULT_PRE_NMS_TOPK
from darkpose.service.runtime.batching import current_job as current_job

logger = logging.getLogger(__name__)

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


#: ``scope["state"]`` key of a request's :class:`WorkHold`.
WORK_HOLD_KEY = "darkpose_work_hold"


class WorkHold:
    """Work a request started in other threads, and what waits for it to stop.

    The route calls :meth:`start` per piece of work it hands to a worker (``hold_work``) and the
    returned function when that worker has stopped (finished, or cancelled between stages);
    whoever holds something for the request until then (the access middleware's per-client
    slot) passes its release to :meth:`after` once the route has returned.  The releases run
    once, on the event loop, when no started work is still running: a client that hangs up
    keeps its slot until its work has really stopped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: list[Callable[[], None]] = []

    def start(self) -> Callable[[], None]:
        """One piece of work started; call the returned function (any thread, once) when it
        has stopped."""
        with self._lock:
            self._running += 1
        once = threading.Event()

        def stopped() -> None:
            if once.is_set():
                return
            once.set()
            with self._lock:
                self._running -= 1
                ready = self._waiting if self._running == 0 else []
                if ready:
                    self._waiting = []
            for fn in ready:
                self._call_soon(fn)

        return stopped

    def after(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (on the event loop) once no started work is running: now when none is."""
        with self._lock:
            if self._running:
                self._waiting.append(fn)
                return
        fn()

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def _call_soon(self, fn: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop has closed (shutdown): nothing is left to release
            logger.debug("work hold: event loop closed before a release")


def hold_work(scope: MutableMapping[str, Any]) -> Callable[[], None]:
    """Register one piece of work of the request of ``scope`` (call on the event loop); call
    the returned function when its worker has stopped.  See :class:`WorkHold`."""
    state = scope.setdefault("state", {})
    hold = state.get(WORK_HOLD_KEY)
    if not isinstance(hold, WorkHold):
        hold = WorkHold(asyncio.get_running_loop())
        state[WORK_HOLD_KEY] = hold
    return hold.start()


def release_after_work(scope: MutableMapping[str, Any], release: Callable[[], None]) -> None:
    """Run ``release`` now, or (when the request of ``scope`` left work running in a worker)
    once that work has stopped.  For what a middleware holds per request until then."""
    hold = scope.get("state", {}).get(WORK_HOLD_KEY)
    if isinstance(hold, WorkHold):
        hold.after(release)
    else:
        release()


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


#: Bytes per pixel of the BGR image the pipeline works on (held until the answer is made).
BGR_BYTES_PER_PIXEL = 3
#: Bytes per pixel of the decoded image beyond the decoder's own: one array copy (≤ 4 B) and
#: the BGR image.
DECODE_COPY_BYTES_PER_PIXEL = 4 + BGR_BYTES_PER_PIXEL
#: Bytes per detector input pixel: the letterboxed/resized uint8 canvas (3 B), the float32
#: blob and its normalised copy (2 × 12 B) and the raw head (YOLOX: 85 float32 per anchor,
#: ~1/48 anchor per pixel: 7 B).
DETECT_BYTES_PER_INPUT_PIXEL = 3 + 24 + 7
#: Bytes per detector candidate kept before NMS (``det_pre_nms_topk``): its box and score and
#: the float64 IoU row temporaries NMS computes against it (one row per kept box, O(k)).
CANDIDATE_BYTES = 16 * 8 + 20
#: float32 network inputs held per crop sent to the pose model: the crop itself, its share of a
#: flip copy / concatenation, and the micro-batcher's batch (joined from several requests).
CROP_COPIES = 2
#: Heatmap copies held per crop: the model output, the joined runs / batches, the flipped-back
#: and fused maps, and the decoder's blurred/log copies (DARK).
HEATMAP_COPIES = 3
#: Bytes per overlay pixel: the downscaled image, the drawing copy and the encoded buffer.
RENDER_BYTES_PER_PIXEL = 9
#: Detector input assumed for a detector that does not state ``input_size`` (chips, ensembles).
DEFAULT_DETECTOR_INPUT = (640, 640)


@dataclass(frozen=True)
class RequestCost:
    """Estimated bytes of one ``POST /pose`` per stage (:func:`estimate_request_cost`) and its
    peak, :attr:`total`: the larger of its two phases (the decoder's temporaries are freed
    before the pipeline runs)."""

    image_decode: int
    image_held: int
    detect: int
    crops: int
    heatmaps: int
    render: int
    base: int = BASE_BYTES

    @property
    def decode_phase(self) -> int:
        """Decoding: the decoder's image, its array copy and the BGR image."""
        return self.image_decode + self.base

    @property
    def pipeline_phase(self) -> int:
        """Detection, crops, heatmaps and the overlay, next to the BGR image."""
        return self.image_held + self.detect + self.crops + self.heatmaps + self.render + self.base

    @property
    def total(self) -> int:
        return max(self.decode_phase, self.pipeline_phase)

    @property
    def without_image(self) -> int:
        """What the query parameters alone cost (known before the image arrives)."""
        return self.detect + self.crops + self.heatmaps + self.base

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def estimate_request_cost(
    width: int,
    height: int,
    mode: str,
    *,
    persons: int,
    crops_per_person: int,
    crop_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    keypoints: int,
    models: int = 1,
    render_pixels: int = 0,
    detector_input: tuple[int, int] = DEFAULT_DETECTOR_INPUT,
    candidates: int = DEFAULT_PRE_NMS_TOPK,
) -> RequestCost:
    """Bytes one request may hold, per stage (its peak: :attr:`RequestCost.total`):

    * ``image_decode`` — width × height × (PIL's 1-4 B + :data:`DECODE_COPY_BYTES_PER_PIXEL`),
      while decoding;
    * ``image_held`` — width × height × :data:`BGR_BYTES_PER_PIXEL`, the image the pipeline
      works on;
    * ``detect`` — the detector input (W × H of ``detector_input`` ×
      :data:`DETECT_BYTES_PER_INPUT_PIXEL`) and ``candidates`` × :data:`CANDIDATE_BYTES` (NMS);
    * ``crops`` — ``persons`` × ``crops_per_person`` crops (one per padding, twice with the
      flip test: :attr:`PipelineOptions.crops_per_person`) of 3 × ``crop_size`` float32,
      :data:`CROP_COPIES` each (one set per distinct model input; ``models`` bounds them);
    * ``heatmaps`` — as many crops × K × ``heatmap_size`` float32 per model,
      :data:`HEATMAP_COPIES` each;
    * ``render`` — ``render_pixels`` × :data:`RENDER_BYTES_PER_PIXEL`;
    * ``base`` — :data:`BASE_BYTES` (JSON, Python objects).

    The onnxruntime activations are not per request: the pose model runs its CPU batches in
    runs of a few crops and the micro-batcher's batches are at most ``max_batch`` crops.
    """
    crops = int(persons) * int(crops_per_person)
    cw, ch = crop_size
    hw, hh = heatmap_size
    dw, dh = detector_input
    return RequestCost(
        image_decode=int(width)
        * int(height)
        * (_decoder_bytes_per_pixel(mode) + DECODE_COPY_BYTES_PER_PIXEL),
        image_held=int(width) * int(height) * BGR_BYTES_PER_PIXEL,
        detect=int(dw) * int(dh) * DETECT_BYTES_PER_INPUT_PIXEL + int(candidates) * CANDIDATE_BYTES,
        crops=crops * models * CROP_COPIES * 3 * cw * ch * 4,
        heatmaps=crops * models * HEATMAP_COPIES * int(keypoints) * hw * hh * 4,
        render=int(render_pixels) * RENDER_BYTES_PER_PIXEL,
    )


def estimate_request_bytes(width: int, height: int, mode: str, **shape: Any) -> int:
    """:func:`estimate_request_cost`'s total (same arguments)."""
    return estimate_request_cost(width, height, mode, **shape).total
