"""The ``Ingress`` deployment of both topologies: the service's own FastAPI app per replica.

``pipeline`` (the default) — :class:`PipelineIngress`: every replica is the whole
single-process service, ``create_app(settings)`` with its own detector, pose model(s) behind the
in-process :class:`~darkpose.service.runtime.batching.MicroBatcher` and decoding, run on the
requests Serve's router sends it.  Only the encoded image (in) and the JSON answer (out) cross a
process or node boundary.

``split`` — :class:`SplitIngress`: the same app around a
:class:`~darkpose.service.core.pipeline.Pipeline` whose pose stage is the ``PoseModel`` pool
(:class:`~darkpose.service.ray_app.pose_pool.RemotePose`): image decode, detector, crops,
rescoring and OKS-NMS here, pose and decoding on the pool.

Every deployment builds its :class:`~darkpose.service.settings.Settings` from a plain ``dict`` of
overrides (plus the replica's ``DARKPOSE_*`` environment), so the application is configured
the same way as the single-process service.  ``measure_bytes`` adds the debug byte counters of
:mod:`darkpose.service.ray_app.wire_bytes` (read with ``stats()``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.ray_app import INGRESS_NAME
from darkpose.service.ray_app.common import make_settings, node_and_replica, parse_address
from darkpose.service.ray_app.pose_pool import PoseJob, RemotePose
from darkpose.service.ray_app.wire_bytes import BoundaryBytes, ByteCounter, count_pose_calls
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)

#: Ports an ingress replica tries for its own metrics, from ``metrics_address``'s port on
#: (one per replica on a node: scrape ``port .. port + replicas per node - 1``).
METRICS_PORTS = 32
#: Longest a new ingress replica's first health check waits for its models to load and warm
#: (below Serve's default ``health_check_timeout_s`` of 30 s).
LOAD_WAIT_S = 20.0


class _IngressBase:
    """What both ingress kinds share: the FastAPI app of :func:`darkpose.service.api.create_app`,
    per-replica metrics, byte counting, a health check that waits for the warm-up, stats."""

    _settings: Settings
    _app: FastAPI | None
    _bytes: ByteCounter | None
    _metrics_bind: tuple[str, int] | None
    _metrics_server: Any
    metrics_port: int | None = None

    def _setup(
        self, settings: Mapping[str, Any] | None, metrics_address: str | None, measure: bool
    ) -> None:
        self._settings = make_settings(settings)
        self._metrics_bind = parse_address(metrics_address) if metrics_address else None
        self._metrics_server = None
        self._bytes = ByteCounter() if measure else None
        self._app = None

    def _finish_app(self, app: FastAPI) -> FastAPI:
        if self._bytes is not None:
            app.add_middleware(BoundaryBytes, counter=self._bytes)
        if self._metrics_bind is not None:
            from prometheus_client import start_http_server

            host, first = self._metrics_bind
            registry = app.state.service.metrics.registry
            # Several replicas on one node: each takes the next free port of the range.
            for port in range(first, min(first + METRICS_PORTS, 65536)):
                try:
                    self._metrics_server, _ = start_http_server(port, addr=host, registry=registry)
                except OSError:
                    continue
                self.metrics_port = port
                logger.info("Ingress metrics on http://%s:%d/metrics", host, port)
                break
            else:
                logger.warning(
                    "Ingress metrics: expected a free port in %s:%d..%d, got none",
                    host,
                    first,
                    first + METRICS_PORTS - 1,
                )
        self._app = app
        return app

    async def check_health(self) -> None:
        """Serve's health check.  The first one (before the replica takes traffic) waits for
        the models to load and warm, so a new replica never answers 503 ``not_ready``; a failed
        load fails the check and Serve replaces the replica."""
        state = self._app.state.service if self._app is not None else None
        if state is None:
            return
        if not state.ready.is_set() and state.load_error is None:
            await asyncio.to_thread(state.wait_ready, LOAD_WAIT_S)
        if state.load_error is not None:
            raise RuntimeError(f"models: expected loaded, got a failed load ({state.load_error})")

    def stats(self) -> dict[str, Any]:
        """Where this replica runs, its ``POST /pose`` count, in-process batching counters
        (``pose_pieces`` queued, ``pose_batches`` model calls: fewer calls than pieces means
        pieces of different requests shared a call) and the bytes per hop (``measure_bytes``)."""
        out: dict[str, Any] = {
            **node_and_replica(),
            "bytes": {},
            "metrics_port": self.metrics_port,
        }
        if self._bytes is not None:
            out["bytes"] = self._bytes.snapshot()
        state = self._app.state.service if self._app is not None else None
        if state is not None:
            reg = state.metrics.registry

            def sample(name: str, labels: dict[str, str] | None = None) -> int:
                return int(reg.get_sample_value(name, labels or {}) or 0)

            ok = {"route": "/pose", "status": "200"}
            out["requests_ok"] = sample("darkpose_requests_total", ok)
            out["pose_pieces"] = sample("darkpose_queue_wait_seconds_count")
            out["pose_batches"] = sample("darkpose_batch_size_count")
            out["pose_crops"] = sample("darkpose_batch_size_sum")
        return out

    def metrics_text(self) -> str:
        """This replica's own Prometheus registry, as text."""
        if self._app is None:
            return ""
        body, _ = self._app.state.service.metrics.render()
        return body.decode()

    def __del__(self) -> None:
        server = getattr(self, "_metrics_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()


@serve.deployment(name=INGRESS_NAME, max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class PipelineIngress(_IngressBase):
    """The whole single-process service per replica (topology ``pipeline``).

    ``create_app(settings)`` builds its detector and pose model(s), wraps the pose models in
    the in-process MicroBatcher (``settings.batching``; batches across the requests of this
    replica) and warms them.  ``metrics_address`` (``"host:port"``, optional): also serve this
    replica's registry there; several replicas on a node take the next free ports.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        metrics_address: str | None = None,
        measure_bytes: bool = False,
    ) -> None:
        self._setup(settings, metrics_address, measure_bytes)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from darkpose.service.api import create_app

        return self._finish_app(create_app(self._settings))


@serve.deployment(name=INGRESS_NAME, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class SplitIngress(_IngressBase):
    """The ingress of the split topology: HTTP, image decode, detector, crops, rescoring and
    OKS-NMS here (CPU); pose and decoding on the ``PoseModel`` pool."""

    async def __init__(  # type: ignore[misc]
        self,
        pose: DeploymentHandle,
        settings: Mapping[str, Any] | None = None,
        metrics_address: str | None = None,
        measure_bytes: bool = False,
    ) -> None:
        from darkpose.service.runtime.factory import build_detector

        self._setup(settings, metrics_address, measure_bytes)
        started = time.perf_counter()
        info = await pose.describe.remote()
        detector = await asyncio.to_thread(build_detector, self._settings)
        logger.info("split Ingress: pose pool described in %.2fs", time.perf_counter() - started)
        remote = RemotePose.over(pose, info, self._settings.request_timeout_s)
        if self._bytes is not None:
            remote.run = count_pose_calls(remote.run, self._bytes, _crops_of)
        self._pipeline = Pipeline(detector, remote, PipelineOptions.from_settings(self._settings))

    def __serve_build_asgi_app__(self) -> FastAPI:
        from darkpose.service.api import create_app

        return self._finish_app(create_app(self._settings, pipeline=self._pipeline))


def _crops_of(job: PoseJob) -> int:
    return int(job.crops.shape[0])
