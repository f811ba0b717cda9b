"""Tracking shared by ``POST /pose/video`` and the ``/pose/stream`` WebSocket: the job slots
(:class:`VideoJobs`), the client a job counts against, the tracker configuration of a request,
the per-frame pose runner, a frame's JSON line and the video metrics."""

import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Scope

from darkpose.service.api.schemas import PersonOut
from darkpose.service.api.state import ServiceState
from darkpose.service.api.work import Job
from darkpose.service.core.errors import Overloaded
from darkpose.service.core.options import given
from darkpose.service.core.pipeline import Pipeline, PipelineOptions, PoseResult
from darkpose.service.core.tracking import TrackedFrame, TrackerConfig
from darkpose.service.settings import Settings

#: Times a frame is retried when the pose queue is full (each after ``retry_after_s``).
OVERLOAD_RETRIES = 10


def client_of(scope: Scope) -> str:
    """The client id of a request or WebSocket: the access middleware's (an API key id, or the
    client IP) when it ran, else the peer address."""
    state = scope.get("state") or {}
    if state.get("client_id"):
        return str(state["client_id"])
    client = scope.get("client")
    return str(client[0]) if client else "-"


class VideoJobs:
    """Videos and live streams being processed: at most ``total`` at once and ``per_client``
    per client (:meth:`take` raises ``Overloaded`` beyond; :meth:`give` when done)."""

    def __init__(self, total: int, per_client: int, retry_after: float) -> None:
        self.total = int(total)
        self.per_client = int(per_client)
        self.retry_after = float(retry_after)
        self._by_client: dict[str, int] = {}
        self._held = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "VideoJobs":
        return cls(
            settings.video_max_jobs, settings.video_max_jobs_per_client, settings.retry_after_s
        )

    def take(self, client: str) -> None:
        with self._lock:
            if self._held >= self.total:
                raise Overloaded(
                    f"videos and streams in progress: expected at most {self.total} "
                    f"(video_max_jobs), got {self._held + 1}",
                    retry_after=self.retry_after,
                )
            mine = self._by_client.get(client, 0)
            if mine >= self.per_client:
                raise Overloaded(
                    f"videos and streams of this client: expected at most {self.per_client} "
                    f"at once (video_max_jobs_per_client), got {mine + 1}",
                    retry_after=self.retry_after,
                )
            self._held += 1
            self._by_client[client] = mine + 1

    def give(self, client: str) -> None:
        with self._lock:
            self._held = max(0, self._held - 1)
            n = self._by_client.get(client, 0) - 1
            if n > 0:
                self._by_client[client] = n
            else:
                self._by_client.pop(client, None)

    @property
    def held(self) -> int:
        with self._lock:
            return self._held


def video_jobs(app_state: Any) -> VideoJobs:
    """The app's :class:`VideoJobs` (``app.state.video_jobs``, set by ``create_app``)."""
    jobs = getattr(app_state, "video_jobs", None)
    if not isinstance(jobs, VideoJobs):
        raise Overloaded("video: expected the app's video job counter, got none")
    return jobs


def frame_json(frame: TrackedFrame) -> dict[str, Any]:
    """One ``{"type": "frame"}`` line: frame index, timestamp (s), whether the detector ran,
    persons (as ``POST /pose`` reports them) each with its ``track_id``."""
    persons = PersonOut.rows(frame.poses)
    for tp, out in zip(frame.persons, persons, strict=True):
        out["track_id"] = tp.track_id
    return {
        "type": "frame",
        "frame": frame.index,
        "timestamp": round(frame.timestamp, 6),
        "detected": frame.detected,
        "persons": persons,
    }


def tracker_config(settings: Settings, det_every: int | None, smooth: bool | None) -> TrackerConfig:
    """The settings' tracking config with a request's ``det_every`` / ``smooth`` applied."""
    return TrackerConfig.from_settings(settings, **given(det_every=det_every, smoothing=smooth))


def make_runner(
    state: ServiceState, pipeline: Pipeline, options: PipelineOptions, job: Job
) -> Callable[..., PoseResult]:
    """``run(image, boxes=None, box_scores=None)`` for a :class:`PoseTracker` in a worker
    thread: each frame gets ``work_timeout_s`` from its start and is retried (after
    ``retry_after_s``) while the pose queue is full, up to :data:`OVERLOAD_RETRIES` times."""
    s = state.settings
    crops = options.max_crops

    def run(image: Any, boxes: Any = None, box_scores: Any = None) -> PoseResult:
        for attempt in range(OVERLOAD_RETRIES + 1):
            job.deadline = time.monotonic() + s.work_timeout_s
            job.check()
            try:
                state.check_queue_room(pipeline, crops)
                result = pipeline(image, options, boxes=boxes, box_scores=box_scores)
            except Overloaded:
                if attempt == OVERLOAD_RETRIES:
                    raise
                _wait(job, s.retry_after_s)
                continue
            state.metrics.observe_timings(result.timings)
            return result
        raise Overloaded("pose queue: expected room, got none", retry_after=s.retry_after_s)

    return run


def _wait(job: Job, seconds: float) -> None:
    """Wait ``seconds``, raising as soon as ``job`` is cancelled (checked every 50 ms)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        job.check()
        time.sleep(min(0.05, left))


def observe_frame(state: ServiceState, kind: str, frame: TrackedFrame) -> None:
    """Count one processed frame in the video metrics (``kind``: video or stream)."""
    m = state.metrics
    m.video_frames.labels(kind=kind).inc()
    if frame.detected:
        m.video_detector_runs.labels(kind=kind).inc()
    if frame.events.born:
        m.track_births.labels(kind=kind).inc(len(frame.events.born))
    if frame.events.died:
        m.track_deaths.labels(kind=kind).inc(len(frame.events.died))
