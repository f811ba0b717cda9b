"""FastAPI app factory: ``POST /pose``, health/readiness, metrics, model listing.

``create_app(settings=None, *, pipeline=None)`` builds one app with its own metrics registry
and :class:`~darkpose.service.api.state.ServiceState`, and assembles the route modules of
:mod:`darkpose.service.api.routes` (``pose``, ``health``, ``ops``).  The models are built (or the
injected :class:`~darkpose.service.core.pipeline.Pipeline` adopted) and warmed in a background
thread
started by the lifespan, so ``/healthz`` answers at once and ``/readyz`` says 503 until the
pipeline is ready.  When ``settings.batching`` is on, every pose model of a built pipeline is
wrapped in a :class:`~darkpose.service.runtime.batching.MicroBatcher`; an injected pipeline is
used as it is (its pose models may batch elsewhere, e.g. Ray Serve).

Pose work runs in the state's worker threads (``max_inflight_requests`` of them, see
:mod:`darkpose.service.api.routes.pose`); the event loop only reads bodies and writes answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI
from starlette.types import Scope

from darkpose.service import package_version
from darkpose.service.api.access_control import install_access_control
from darkpose.service.api.access_control.middleware import ROUTE_LABEL
from darkpose.service.api.deps import reject_unknown_query
from darkpose.service.api.errors import RequestContextMiddleware, install_error_handlers
from darkpose.service.api.routes import demo, docs, health, ops, pose, stream, video
from darkpose.service.api.state import ServiceState
from darkpose.service.api.tracking import VideoJobs
from darkpose.service.core.pipeline import Pipeline
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)


def _route_label(scope: Scope) -> str:
    """The route's path (the router's, or access control's for a request it refused before
    routing), else ``unmatched`` (bounded labels)."""
    path = getattr(scope.get("route"), "path", None) or (scope.get("state") or {}).get(ROUTE_LABEL)
    return str(path) if path else "unmatched"


def create_app(settings: Settings | None = None, *, pipeline: Pipeline | None = None) -> FastAPI:
    """The HTTP service.  ``pipeline``: a pre-built Pipeline to serve instead of building one
    from ``settings`` (e.g. the Ray Serve ingress)."""
    settings = settings if settings is not None else Settings()  # type: ignore[call-arg]
    state = ServiceState(settings, pipeline)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(
        title="DARK pose service",
        version=package_version(),
        description="Top-down human pose estimation (COCO 17 keypoints) with DARK decoding.",
        lifespan=lifespan,
        docs_url=None,  # served offline by darkpose.service.api.routes.docs
        redoc_url=None,
        redirect_slashes=False,  # a redirect would be built from the Host header (open redirect)
    )
    app.state.service = state
    install_error_handlers(app)

    def on_done(scope: Scope, status: int, seconds: float) -> None:
        state.metrics.observe_request(_route_label(scope), status, seconds)

    # access control runs inside the request context (request id, route metrics) and before
    # any body is read; nothing is added when no key or limit is configured
    install_access_control(app, settings, state.metrics.registry)
    app.add_middleware(RequestContextMiddleware, on_done=on_done, access_log=settings.access_log)
    strict_query = [Depends(reject_unknown_query)]  # 422 for undeclared query parameters
    app.include_router(
        pose.build_router(settings.max_persons, settings.min_score_threshold),
        dependencies=strict_query,
    )
    app.state.video_jobs = VideoJobs.from_settings(settings)  # videos + streams, shared
    app.include_router(video.build_router(settings.max_persons), dependencies=strict_query)
    app.include_router(stream.build_router(settings.max_persons))
    if settings.demo:
        app.include_router(demo.router)
    app.include_router(health.router, dependencies=strict_query)
    app.include_router(ops.router, dependencies=strict_query)
    docs.install(app)
    return app
