"""Dynamic micro-batching of pose-model calls across concurrent requests.

:class:`MicroBatcher` wraps a :class:`~darkpose.service.core.types.PoseModel` and is itself one,
so the pipeline does not know it exists.  Each ``infer(batch)`` call (made from a request's
worker thread) enqueues its crops and blocks on a future; one batcher thread gathers queued
crops until ``max_batch`` crops are collected or ``max_wait_ms`` has passed since the oldest
waiting call arrived, runs **one** model call on the concatenation and scatters the heatmaps
back.  The HTTP service and the Ray pose pool both use it.

``workers`` batcher threads share the queue (one of them collects the next batch at a time), so
up to ``workers`` model calls run at once: on a CPU a single caller thread would leave cores
idle while every request waits for the one running batch.

Crops queued by a caller whose :class:`StoppableJob` (read from :data:`current_job`; the HTTP
layer sets its request's :class:`~darkpose.service.api.work.Job` there) has stopped — client
gone, deadline passed — are dropped when their turn comes: their caller gets the job's error
instead of a model call.

The queue is bounded by ``queue_size`` crops: a call that would overflow it raises
:class:`~darkpose.service.core.errors.Overloaded` at once (HTTP 503 + ``Retry-After``).  A call
larger than ``max_batch`` is split into pieces of at most ``max_batch`` crops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from darkpose.service.core.errors import InvalidParameter, NotReady, Overloaded
from darkpose.service.core.types import F32, PoseModel

logger = logging.getLogger(__name__)


class StoppableJob(Protocol):
    """The work of one caller that may stop early (client gone, deadline passed)."""

    def check(self) -> None:
        """Raise the job's error when it has stopped."""

    def error(self) -> Exception | None:
        """What :meth:`check` would raise now (``None``: go on)."""


#: The job of the caller a worker thread is running (the HTTP layer sets it per request): the
#: micro-batcher drops the queued crops of a job that has stopped instead of running them.
current_job: ContextVar[StoppableJob | None] = ContextVar("darkpose_current_job", default=None)


@dataclass
class _Item:
    crops: F32  # (n, 3, H, W)
    future: Future[F32]
    enqueued: float = field(default_factory=time.perf_counter)
    job: StoppableJob | None = None  # the caller's job: its crops are dropped once it has stopped


class MicroBatcher:
    """A :class:`PoseModel` that batches ``infer`` calls from many threads into few calls.

    pose_model: the wrapped model (its ``spec`` is exposed unchanged).
    max_batch: most crops per model call (> 0).
    max_wait_ms: longest time the oldest waiting crop is held back to fill a batch (≥ 0).
    queue_size: most crops waiting at once; beyond it ``infer`` raises ``Overloaded``.
    retry_after: seconds suggested to an overloaded caller.
    on_batch(size): called after each model call with its crop count (metrics).
    on_wait(seconds): called per queued piece with its queue wait (metrics).
    workers: batcher threads, i.e. model calls that may run at the same time (>= 1).
    """

    def __init__(
        self,
        pose_model: PoseModel,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        queue_size: int = 512,
        *,
        retry_after: float = 1.0,
        on_batch: Callable[[int], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
        name: str = "pose-batcher",
        workers: int = 1,
    ) -> None:
        if max_batch < 1:
            raise InvalidParameter(f"max_batch: expected an integer >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise InvalidParameter(f"max_wait_ms: expected a value >= 0, got {max_wait_ms}")
        if queue_size < 1:
            raise InvalidParameter(f"queue_size: expected an integer >= 1, got {queue_size}")
        if workers < 1:
            raise InvalidParameter(f"workers: expected an integer >= 1, got {workers}")
        self.model = pose_model
        self.spec = pose_model.spec
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.queue_size = int(queue_size)
        self.retry_after = float(retry_after)
        self.on_batch = on_batch
        self.on_wait = on_wait
        self._queue: deque[_Item] = deque()
        self._pending = 0  # crops in the queue
        self._cond = threading.Condition()
        self._closed = False
        self._collecting = False  # one worker at a time gathers the next batch
        self._calls_lock = threading.Lock()
        self.calls = 0  # model calls made (for tests / introspection)
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(int(workers))
        ]
        for t in self._threads:
            t.start()

    # --- PoseModel ---------------------------------------------------------------------------
    def infer(self, batch: F32) -> F32:
        """Heatmaps for ``batch`` (N, 3, H, W) float32 → (N, K, h, w) float32.

        Blocks the calling thread until the batcher thread has run the crops.  Raises
        ``Overloaded`` when the queue cannot take them and ``NotReady`` after :meth:`close`.
        """
        if not isinstance(batch, np.ndarray) or batch.ndim != 4:
            got = getattr(batch, "shape", type(batch).__name__)
            raise InvalidParameter(f"batch: expected an (N, 3, H, W) array, got {got}")
        n = int(batch.shape[0])
        if n == 0:
            return self.model.infer(batch)
        job = current_job.get()
        if job is not None:
            job.check()
        pieces = [batch[i : i + self.max_batch] for i in range(0, n, self.max_batch)]
        items = [
            _Item(np.ascontiguousarray(p, dtype=np.float32), Future(), job=job) for p in pieces
        ]
        with self._cond:
            if self._closed:
                raise NotReady("the pose batcher is shut down")
            full = self._overflow(n, str(n))
            if full is not None:
                raise full
            now = time.perf_counter()
            for it in items:
                it.enqueued = now
                self._queue.append(it)
            self._pending += n
            self._cond.notify_all()
        outs = [it.future.result() for it in items]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _overflow(self, n: int, new: str) -> Overloaded | None:
        """The error for ``n`` more crops when the queue holds crops and cannot take them (a
        call larger than the whole queue is still admitted when the queue is empty); the
        caller holds ``self._cond``."""
        if self._pending > 0 and self._pending + n > self.queue_size:
            return Overloaded(
                f"pose queue full: expected at most {self.queue_size} waiting crops, got "
                f"{self._pending} waiting + {new} new",
                retry_after=self.retry_after,
            )
        return None

    def check_room(self, n: int) -> None:
        """Raise ``Overloaded`` now when up to ``n`` more crops might not fit (the same rule as
        :meth:`infer`, checked before the caller does the work that makes the crops)."""
        with self._cond:
            full = self._overflow(n, f"up to {n}")
        if full is not None:
            raise full

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        with self._cond:
            return self._closed

    @property
    def pending(self) -> int:
        """Crops waiting in the queue now."""
        with self._cond:
            return self._pending

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking work, finish what is queued, join the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- batcher thread -----------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        """Wait for work; return the items of the next model call (None when closed & empty)."""
        with self._cond:
            while not self._queue or self._collecting:
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            self._collecting = True
            try:
                deadline = self._queue[0].enqueued + self.max_wait_s
                while self._pending < self.max_batch and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                taken: list[_Item] = []
                count = 0
                while self._queue and count + self._queue[0].crops.shape[0] <= self.max_batch:
                    it = self._queue.popleft()
                    taken.append(it)
                    count += it.crops.shape[0]
                self._pending -= count
                return taken
            finally:
                self._collecting = False
                self._cond.notify_all()

    @staticmethod
    def _hook(fn: Callable[[float], None] | Callable[[int], None] | None, values: list) -> None:
        if fn is None:
            return
        try:
            for v in values:
                fn(v)
        except Exception:  # metrics must never stop the batcher thread
            logger.exception("micro-batcher metrics hook failed")

    @staticmethod
    def _drop_stopped(items: list[_Item]) -> list[_Item]:
        """The items whose request still wants them; the others' callers get their job's error
        (client gone, deadline passed) instead of a model call."""
        live = []
        for it in items:
            err = it.job.error() if it.job is not None else None
            if err is None:
                live.append(it)
            else:
                it.future.set_exception(err)
        return live

    def _loop(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            items = self._drop_stopped(items)
            if not items:
                continue
            start = time.perf_counter()
            self._hook(self.on_wait, [start - it.enqueued for it in items])
            sizes = [it.crops.shape[0] for it in items]
            try:
                batch = (
                    items[0].crops
                    if len(items) == 1
                    else np.concatenate([it.crops for it in items], axis=0)
                )
                out = self.model.infer(batch)
                if out.shape[0] != batch.shape[0]:
                    raise RuntimeError(
                        f"pose model returned {out.shape[0]} results for {batch.shape[0]} crops"
                    )
            except Exception as exc:  # scatter the failure to every waiting caller
                for it in items:
                    it.future.set_exception(exc)
                continue
            with self._calls_lock:
                self.calls += 1
            self._hook(self.on_batch, [int(batch.shape[0])])
            offset = 0
            for it, n in zip(items, sizes, strict=True):
                it.future.set_result(out[offset : offset + n])
                offset += n
