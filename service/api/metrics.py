"""Prometheus metrics of one app instance (its own ``CollectorRegistry``).

The names are fixed in docs/contracts.md; dashboards and alert rules rely on them:

- ``darkpose_requests_total{route,status}`` counter
- ``darkpose_stage_seconds{stage}`` histogram, stage ∈ detect, crop, pose, decode, postprocess
- ``darkpose_request_seconds{route}`` histogram (whole request, server side)
- ``darkpose_queue_wait_seconds`` histogram (crop batch waiting in the micro-batcher)
- ``darkpose_batch_size`` histogram (crops per pose-model call)
- ``darkpose_inflight_requests`` gauge
- ``darkpose_persons_per_image`` histogram
- ``darkpose_model_info{pose_model,detector,providers,decode}`` gauge (= 1)
- ``darkpose_video_active{kind}`` gauge, kind ∈ video (``POST /pose/video``), stream
  (``/pose/stream`` WebSocket): videos and live streams being processed
- ``darkpose_video_frames_total{kind}`` counter: frames answered (frames/s = its rate)
- ``darkpose_video_frames_dropped_total{kind,reason}`` counter, reason ∈ stale (a newer frame
  arrived before it started), rate (over ``stream_max_fps``), invalid (not a decodable image)
- ``darkpose_video_detector_runs_total{kind}`` counter (detector runs per frame = its rate over
  the frames' rate)
- ``darkpose_track_births_total{kind}`` / ``darkpose_track_deaths_total{kind}`` counters
- ``darkpose_edge_rejections_total{reason}`` counter: connections ``darkpose serve``'s HTTP
  protocol (:mod:`darkpose.service.api.protocol`) cut or answered before the app, reason ∈
  :data:`EDGE_REASONS`; totals of the process
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from darkpose.service.core.pipeline import (
    STAGES,  # the stage label values: the pipeline's own stages
)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
_PERSON_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 20, 30, 50, 100)

#: Why the edge refused a connection: over ``max_connections`` with none to evict (refused) or
#: evicting the longest idle one (evicted), no request head within ``header_timeout_s``, a
#: response unread for ``response_write_timeout_s``, an upload in tiny chunks, a request
#: target over ``max_url_bytes`` (414), a request head over the header limits (431).
EDGE_REASONS = (
    "refused",
    "evicted",
    "header_timeout",
    "write_timeout",
    "chunk_flood",
    "uri_too_long",
    "headers_too_large",
)
#: The edge's counts since the process started (the protocol adds, ``/metrics`` reads).
edge_rejections: Tally[str] = Tally()


class _EdgeCollector(Collector):
    """``darkpose_edge_rejections_total{reason}`` read from :data:`edge_rejections`."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "darkpose_edge_rejections",
            "Connections the HTTP edge cut or answered before the app, by reason",
            labels=["reason"],
        )
        for reason in EDGE_REASONS:
            family.add_metric([reason], edge_rejections[reason])
        yield family


class Metrics:
    """All service metrics, registered in a private registry (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "darkpose_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "darkpose_stage_seconds",
            "Pipeline stage time per request",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "darkpose_request_seconds",
            "Whole request time on the server",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "darkpose_queue_wait_seconds",
            "Time crops wait in the micro-batcher before their pose-model call",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "darkpose_batch_size", "Crops per pose-model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inflight = Gauge(
            "darkpose_inflight_requests", "POST /pose requests being served", registry=r
        )
        self.work_running = Gauge(
            "darkpose_work_running",
            "POST /pose work in worker threads, abandoned work included (until it stops)",
            registry=r,
        )
        self.persons = Histogram(
            "darkpose_persons_per_image",
            "Persons returned per image",
            buckets=_PERSON_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "darkpose_model_info",
            "Loaded models (value 1)",
            ["pose_model", "detector", "providers", "decode"],
            registry=r,
        )

        self.video_active = Gauge(
            "darkpose_video_active",
            "Videos and live streams being processed",
            ["kind"],
            registry=r,
        )
        self.video_frames = Counter(
            "darkpose_video_frames", "Video and stream frames answered", ["kind"], registry=r
        )
        self.video_frames_dropped = Counter(
            "darkpose_video_frames_dropped",
            "Stream frames skipped (stale, over the frame rate, invalid)",
            ["kind", "reason"],
            registry=r,
        )
        self.video_detector_runs = Counter(
            "darkpose_video_detector_runs",
            "Detector runs on video and stream frames",
            ["kind"],
            registry=r,
        )
        self.track_births = Counter("darkpose_track_births", "Tracks started", ["kind"], registry=r)
        self.track_deaths = Counter(
            "darkpose_track_deaths", "Tracks ended after their grace period", ["kind"], registry=r
        )
        r.register(_EdgeCollector())

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    def observe_timings(self, timings: Mapping[str, float]) -> None:
        """Record the pipeline's per-stage seconds (unknown stage names are ignored)."""
        for stage in STAGES:
            if stage in timings:
                self.stage_seconds.labels(stage=stage).observe(float(timings[stage]))

    def set_model_info(self, pose_model: str, detector: str, providers: str, decode: str) -> None:
        self.model_info.clear()
        self.model_info.labels(
            pose_model=pose_model, detector=detector, providers=providers, decode=decode
        ).set(1)

    def render(self) -> tuple[bytes, str]:
        """(exposition text, content type) for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
