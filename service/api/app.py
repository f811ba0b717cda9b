"""FastAPI app factory: ``POST /pose``, health/readiness, metrics, model listing.

``create_app(settings=None, *, pipeline=None)`` builds one app with its own metrics registry.
The models are built (or the injected :class:`~service.core.pipeline.Pipeline` adopted) and
warmed in a background thread started by the lifespan, so ``/healthz`` answers at once and
``/readyz`` says 503 until the pipeline is ready.  When ``settings.batching`` is on, every pose
model of a built pipeline is wrapped in a :class:`~service.api.batching.MicroBatcher`; an
injected pipeline is used as it is (its pose models may batch elsewhere, e.g. Ray Serve).

Pose work runs in worker threads (``anyio.to_thread.run_sync`` with a capacity limiter of
``max_inflight_requests``); the event loop only reads bodies and writes answers.
"""

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from starlette.types import Scope

from service.api.body import extract_image
from service.api.errors import RequestContextMiddleware, install_error_handlers, request_id_of
from service.api.schemas import (
    HealthResponse,
    ModelsResponse,
    PoseResponse,
    ReadyResponse,
    Timings,
    error_responses,
)
from service.api.state import ServiceState
from service.core.errors import InvalidImage
from service.settings import Settings

logger = logging.getLogger(__name__)

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_POSE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image: multipart field `image`, or the raw bytes as the body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/webp": _BINARY,
            "image/bmp": _BINARY,
            "application/octet-stream": _BINARY,
        },
    }
}


def _finite(v: Any) -> float:
    f = float(v)
    return f if math.isfinite(f) else 0.0


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def _clean(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _persons_json(persons: Any) -> list[dict[str, Any]]:
    """Persons as :class:`PersonOut`-shaped dicts (non-finite numbers become 0)."""
    out = []
    for p in persons:
        kpts = _clean(np.asarray(p.keypoints, dtype=np.float64).reshape(-1, 3))
        bbox = _clean(np.asarray(p.bbox, dtype=np.float64).reshape(4))
        out.append(
            {
                "bbox": bbox.tolist(),
                "box_score": _finite(p.box_score),
                "score": _finite(p.score),
                "keypoints": kpts.tolist(),
                "keypoints_flat": kpts.reshape(-1).tolist(),
            }
        )
    return out


def _run_pose(
    state: ServiceState, pipeline: Any, data: bytes, options: Any, render: bool, request_id: str
) -> tuple[bytes, str]:
    """Worker-thread part of ``POST /pose``: decode → pipeline → metrics → the response body
    (``PoseResponse`` JSON, or the overlay PNG) as ``(content, media type)``.

    The body is built as plain JSON here, off the event loop; its schema is ``PoseResponse``
    (OpenAPI document, tests) and skipping pydantic validation of our own output saves CPU.
    """
    import cv2

    from service.core.io import decode_image

    s = state.settings
    t0 = time.perf_counter()
    image = decode_image(data, **s.image_limits)
    decode_s = time.perf_counter() - t0
    result = pipeline(image, options=options)
    timings = result.timings
    state.metrics.observe_timings(timings)
    state.metrics.persons.observe(len(result.persons))
    if render:
        from service.core.visualize import draw_poses

        ok, enc = cv2.imencode(".png", draw_poses(image, result.persons))
        if not ok:
            raise InvalidImage("render: expected a PNG-encodable overlay, got an encoder failure")
        return enc.tobytes(), "image/png"
    stage_ms = dict.fromkeys(Timings.model_fields, 0.0)
    for k, v in timings.items():
        if k in stage_ms:
            stage_ms[k] = 1000.0 * float(v)
    stage_ms["image_decode"] = 1000.0 * decode_s
    h, w = image.shape[:2]
    body = {
        "request_id": request_id,
        "image": {"width": int(w), "height": int(h)},
        "persons": _persons_json(result.persons),
        "model": {
            **state.response_model_info(),
            "decode": str(options.decode),
            "flip": bool(options.flip),
        },
        "timings_ms": stage_ms,
    }
    content = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return content.encode("utf-8"), "application/json"


def create_app(settings: Settings | None = None, *, pipeline: Any | None = None) -> FastAPI:
    """The HTTP service.  ``pipeline``: a pre-built Pipeline to serve instead of building one
    from ``settings`` (e.g. the Ray Serve ingress)."""
    settings = settings if settings is not None else Settings()  # type: ignore[call-arg]
    state = ServiceState(settings, pipeline)
    limiter_box: dict[str, anyio.CapacityLimiter] = {}

    def limiter() -> anyio.CapacityLimiter:
        if "l" not in limiter_box:
            limiter_box["l"] = anyio.CapacityLimiter(settings.max_inflight_requests)
        return limiter_box["l"]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limiter()
        state.start_loading()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(
        title="DARK pose service",
        version="0.1.0",
        description="Top-down human pose estimation (COCO 17 keypoints) with DARK decoding.",
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)

    def on_done(scope: Scope, status: int, seconds: float) -> None:
        state.metrics.observe_request(_route_label(scope), status, seconds)

    app.add_middleware(RequestContextMiddleware, on_done=on_done)

    @app.post(
        "/pose",
        response_model=PoseResponse,
        summary="Estimate the poses of all persons in an image",
        responses={
            200: {
                "description": "persons as JSON, or the overlay PNG when render=true",
                "content": {"image/png": _BINARY},
            },
            **error_responses(400, 408, 413, 415, 422, 500, 503),
        },
        openapi_extra=_POSE_REQUEST_BODY,
    )
    async def pose(
        request: Request,
        decode: Annotated[
            Literal["argmax", "standard", "dark"] | None,
            Query(description="heatmap decoding (default: the service setting)"),
        ] = None,
        flip: Annotated[bool | None, Query(description="flip test-time augmentation")] = None,
        score_threshold: Annotated[
            float | None, Query(ge=0.0, le=1.0, description="person detection score threshold")
        ] = None,
        keypoint_threshold: Annotated[
            float | None,
            Query(ge=0.0, le=1.0, description="keypoint score threshold used in rescoring"),
        ] = None,
        max_persons: Annotated[
            int | None,
            Query(ge=1, le=settings.max_persons, description="most persons returned"),
        ] = None,
        render: Annotated[
            bool, Query(description="return the skeleton overlay as PNG instead of JSON")
        ] = False,
    ) -> Any:
        request_id = request_id_of(request.scope)
        ready_pipeline = state.require_ready()
        state.enter()
        try:
            data = await extract_image(
                request, settings.max_image_bytes, settings.request_timeout_s
            )
            overrides: dict[str, Any] = {}
            if decode is not None:
                overrides["decode"] = decode
            if flip is not None:
                overrides["flip"] = flip
            if score_threshold is not None:
                overrides["det_score_threshold"] = score_threshold
            if keypoint_threshold is not None:
                overrides["keypoint_score_threshold"] = keypoint_threshold
            overrides["max_persons"] = (
                max_persons if max_persons is not None else settings.default_max_persons
            )
            options = state.default_options.replace(**overrides)
            content, media_type = await anyio.to_thread.run_sync(
                partial(_run_pose, state, ready_pipeline, data, options, render, request_id),
                limiter=limiter(),
            )
        finally:
            state.leave()
        return Response(content, media_type=media_type)

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness")
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        summary="Readiness: models loaded and warmed (503 before)",
        responses=error_responses(503),
    )
    async def readyz() -> ReadyResponse:
        state.require_ready()
        return ReadyResponse(status="ready", ready=True)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models", response_model=ModelsResponse, summary="Loaded models and settings")
    async def models() -> ModelsResponse:
        return ModelsResponse(**state.model_info())

    return app
