"""``/pose/stream``: a WebSocket of encoded frames in, tracked persons per frame out.

Protocol (JSON text messages from the server, docs/video.md):

* connect to ``/pose/stream`` (query: ``det_every``, ``smooth``, ``max_persons``); with API
  keys, a browser offers the subprotocols ``["darkpose", "bearer.<key>"]`` (the server selects
  ``darkpose``), other clients may send the usual ``Authorization`` / ``X-API-Key`` headers.
  There is no key query parameter: a URL's query ends up in access logs;
* the server answers ``{"type": "ready", …}`` (tracking settings and the connection's limits),
  or ``{"type": "error", …}`` and closes (4401 unauthorized, 4429 over the client's rate or
  concurrency cap, 1013 overloaded or not ready: retry after ``retry_after`` seconds);
* the client sends each frame as one binary message (JPEG, PNG or WebP, at most
  ``max_image_bytes``), optionally preceded by a text message ``{"timestamp": seconds}``
  (default: the arrival time), numbered 0, 1, 2… in arrival order;
* the server answers each processed frame with ``{"type": "frame", "frame": n, …}``: the persons
  with their ``track_id`` and ``skipped``, the frames dropped since the previous answer with
  the reason: ``stale`` (a newer frame arrived before it started: the server keeps only the
  newest waiting frame, it never queues), ``rate`` (over ``stream_max_fps``), ``invalid`` (not
  a decodable image; an ``{"type": "error", "frame": n}`` message says why);
* the server closes the connection (1001) after ``stream_idle_timeout_s`` without a message.

A client that waits for each answer before sending the next frame never has a frame dropped
for staleness.  The stream holds one of the ``video_max_jobs`` slots (and of the client's
``video_max_jobs_per_client``) while it is open.
"""

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from darkpose.service.api.access_control.clients import peer
from darkpose.service.api.access_control.middleware import presented_keys
from darkpose.service.api.access_control.policy import AccessPolicy
from darkpose.service.api.errors import error_body
from darkpose.service.api.state import ServiceState
from darkpose.service.api.tracking import (
    client_of,
    frame_json,
    make_runner,
    observe_frame,
    tracker_config,
    video_jobs,
)
from darkpose.service.api.work import Job, current_job
from darkpose.service.core.errors import DarkPoseError, InputError, PayloadTooLarge
from darkpose.service.core.io import decode_image
from darkpose.service.core.tracking import PoseTracker, TrackedFrame

logger = logging.getLogger(__name__)

SUBPROTOCOL = "darkpose"
KEY_SUBPROTOCOL_PREFIX = "bearer."
CLOSE_UNAUTHORIZED = 4401
CLOSE_THROTTLED = 4429
CLOSE_TRY_AGAIN = 1013
CLOSE_GOING_AWAY = 1001


@dataclass
class _Pending:
    """The newest frame waiting to be processed, and the frames skipped since the last answer."""

    frame: tuple[int, bytes, float] | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False  # a frame is being processed (the client waits: not idle)


class _RateLimit:
    """Token bucket of ``rate`` frames/s with a burst of one second's frames."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, math.ceil(self.rate))
        self.level = self.burst
        self.t = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False


def _offered(ws: WebSocket) -> list[str]:
    raw = ws.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def _credentials(ws: WebSocket) -> list[bytes]:
    keys = presented_keys(ws.scope)
    for p in _offered(ws):
        if p.startswith(KEY_SUBPROTOCOL_PREFIX) and len(p) > len(KEY_SUBPROTOCOL_PREFIX):
            keys.append(p[len(KEY_SUBPROTOCOL_PREFIX) :].encode("utf-8", "replace"))
    return keys


async def _refuse(ws: WebSocket, subprotocol: str | None, code: int, body: dict[str, Any]) -> None:
    await ws.accept(subprotocol=subprotocol)
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps({"type": "error", **body}))
        await ws.close(code=code)


def _process(
    tracker: PoseTracker, job: Job, state: ServiceState, data: bytes, ts: float, n: int
) -> TrackedFrame:
    """Worker thread: decode one frame and track it."""
    token = current_job.set(job)
    try:
        s = state.settings
        image = decode_image(data, **s.image_limits, exif_orientation=True)
        return tracker.process(image, ts, index=n)
    finally:
        current_job.reset(token)


async def serve_stream(
    ws: WebSocket,
    state: ServiceState,
    *,
    det_every: int | None,
    smooth: bool | None,
    max_persons: int | None,
) -> None:
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in _offered(ws) else None
    policy = getattr(ws.app.state, "access", None)
    client = client_of(ws.scope)
    admitted = False
    if isinstance(policy, AccessPolicy):
        # the peer after proxy resolution (uvicorn's ProxyHeadersMiddleware rewrites the scope)
        address = peer(ws.scope)
        client = address
        if policy.keys.enabled:
            keys = _credentials(ws)
            wait = policy.auth_wait(address)
            if wait > 0:
                body = error_body(
                    "too_many_requests",
                    "failed authentications: expected fewer from this address, got more; retry "
                    f"in {max(1, math.ceil(wait))} s",
                    "-",
                )
                await _refuse(ws, subprotocol, CLOSE_THROTTLED, {**body, "retry_after": wait})
                return
            kid = policy.authenticate(keys[0]) if len(keys) == 1 else None
            if kid is None:
                policy.auth_failed(address)
                if policy.metrics is not None:
                    policy.metrics.unauthorized.labels(reason="missing").inc()
                await _refuse(
                    ws,
                    subprotocol,
                    CLOSE_UNAUTHORIZED,
                    error_body(
                        "unauthorized",
                        "expected one API key, in the 'bearer.<key>' subprotocol or the "
                        "Authorization / X-API-Key header, got none, several or an unknown key",
                        "-",
                    ),
                )
                return
            client = kid
        refused = policy.admit(client)
        if refused is not None:
            reason, wait = refused
            body = error_body(
                "too_many_requests",
                f"{reason} limit: expected fewer requests of this client, got more; retry in "
                f"{max(1, math.ceil(wait))} s",
                "-",
            )
            await _refuse(ws, subprotocol, CLOSE_THROTTLED, {**body, "retry_after": wait})
            return
        admitted = True
    try:
        await _serve_admitted(ws, state, subprotocol, client, det_every, smooth, max_persons)
    finally:
        if admitted and isinstance(policy, AccessPolicy):
            policy.release(client)


async def _serve_admitted(
    ws: WebSocket,
    state: ServiceState,
    subprotocol: str | None,
    client: str,
    det_every: int | None,
    smooth: bool | None,
    max_persons: int | None,
) -> None:
    s = state.settings
    jobs = video_jobs(ws.app.state)
    try:
        pipeline = state.require_ready()
        config = tracker_config(s, det_every, smooth)
        options = state.options().replace(
            max_persons=max_persons if max_persons is not None else s.pipeline.max_persons
        )
        jobs.take(client)
    except DarkPoseError as exc:
        retry = getattr(exc, "retry_after", s.retry_after_s)
        code = CLOSE_TRY_AGAIN if exc.status_code == 503 else 1008
        body = {**error_body(exc.code, exc.message, "-"), "retry_after": retry}
        await _refuse(ws, subprotocol, code, body)
        return
    metrics = state.metrics
    metrics.video_active.labels(kind="stream").inc()
    job = Job(s.work_timeout_s, s.retry_after_s)
    tracker = PoseTracker(
        pipeline,
        config,
        options,
        run=make_runner(state, pipeline, options, job),
        min_side=s.min_image_side,
    )
    pending = _Pending()
    closed = asyncio.Event()
    try:
        await ws.accept(subprotocol=subprotocol)
        await ws.send_text(
            json.dumps(
                {
                    "type": "ready",
                    "tracking": {"det_every": config.det_every, "smooth": config.smoothing},
                    "limits": {
                        "max_fps": s.stream_max_fps,
                        "max_frame_bytes": s.max_image_bytes,
                        "idle_timeout_s": s.stream_idle_timeout_s,
                    },
                    "model": state.response_model_info(),
                }
            )
        )
        worker = asyncio.ensure_future(_answer(ws, state, tracker, job, pending, closed))
        try:
            await _receive(ws, state, pending, closed)
        finally:
            closed.set()
            pending.ready.set()
            job.cancel("stream closed")
            with contextlib.suppress(BaseException):
                await worker
    finally:
        jobs.give(client)
        metrics.video_active.labels(kind="stream").dec()


async def _receive(
    ws: WebSocket, state: ServiceState, pending: _Pending, closed: asyncio.Event
) -> None:
    """Read messages until the client leaves or idles; keep only the newest waiting frame."""
    s = state.settings
    dropped = state.metrics.video_frames_dropped
    rate = _RateLimit(s.stream_max_fps)
    t0: float | None = None
    next_ts: float | None = None
    n = -1
    while not closed.is_set():
        try:
            message = await asyncio.wait_for(ws.receive(), s.stream_idle_timeout_s)
        except TimeoutError:
            if pending.busy or pending.frame is not None:
                continue  # waiting for our answer is not idling
            with contextlib.suppress(Exception):
                await ws.close(
                    code=CLOSE_GOING_AWAY,
                    reason=f"idle for {s.stream_idle_timeout_s:g} s (stream_idle_timeout_s)",
                )
            return
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        if text is not None:
            next_ts = _timestamp_of(text)
            if next_ts is None:
                await _send(
                    ws,
                    {
                        "type": "error",
                        **error_body(
                            "invalid_parameter",
                            f'text message: expected {{"timestamp": seconds}}, got {text[:60]!r}',
                            "-",
                        ),
                    },
                )
            continue
        if data is None:
            continue
        n += 1
        now = time.monotonic()
        if t0 is None:
            t0 = now
        ts = next_ts if next_ts is not None else now - t0
        next_ts = None
        if len(data) > s.max_image_bytes:
            dropped.labels(kind="stream", reason="invalid").inc()
            pending.skipped.append({"frame": n, "reason": "invalid"})
            exc = PayloadTooLarge(
                f"frame: expected at most {s.max_image_bytes} bytes (max_image_bytes), "
                f"got {len(data)}"
            )
            await _send(ws, {"type": "error", "frame": n, **error_body(exc.code, exc.message, "-")})
            continue
        if not rate.take():
            dropped.labels(kind="stream", reason="rate").inc()
            pending.skipped.append({"frame": n, "reason": "rate"})
            continue
        if pending.frame is not None:
            dropped.labels(kind="stream", reason="stale").inc()
            pending.skipped.append({"frame": pending.frame[0], "reason": "stale"})
        pending.frame = (n, data, ts)
        pending.ready.set()


def _timestamp_of(text: str) -> float | None:
    try:
        obj = json.loads(text)
        ts = float(obj["timestamp"])
    except (ValueError, TypeError, KeyError):
        return None
    return ts if math.isfinite(ts) and ts >= 0 else None


async def _send(ws: WebSocket, obj: dict[str, Any]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(json.dumps(obj, allow_nan=False, separators=(",", ":")))


async def _answer(
    ws: WebSocket,
    state: ServiceState,
    tracker: PoseTracker,
    job: Job,
    pending: _Pending,
    closed: asyncio.Event,
) -> None:
    """Process the newest waiting frame, answer it, repeat until the stream closes."""
    loop = asyncio.get_running_loop()
    while True:
        await pending.ready.wait()
        pending.ready.clear()
        if closed.is_set():
            return
        item = pending.frame
        pending.frame = None
        if item is None:
            continue
        n, data, ts = item
        pending.busy = True
        try:
            frame = await loop.run_in_executor(
                state.executor, _process, tracker, job, state, data, ts, n
            )
        except InputError as exc:
            state.metrics.video_frames_dropped.labels(kind="stream", reason="invalid").inc()
            skipped, pending.skipped = pending.skipped, []
            await _send(
                ws,
                {
                    "type": "error",
                    "frame": n,
                    "skipped": skipped,
                    **error_body(exc.code, exc.message, "-"),
                },
            )
            continue
        except DarkPoseError as exc:  # overloaded, deadline: this frame has no answer
            if closed.is_set():
                return
            await _send(ws, {"type": "error", "frame": n, **error_body(exc.code, exc.message, "-")})
            continue
        except Exception:
            if closed.is_set():
                return
            logger.exception("stream frame %d failed", n)
            await _send(
                ws,
                {
                    "type": "error",
                    "frame": n,
                    **error_body("internal_error", "internal error", "-"),
                },
            )
            continue
        finally:
            pending.busy = False
        observe_frame(state, "stream", frame)
        skipped, pending.skipped = pending.skipped, []
        await _send(ws, {**frame_json(frame), "skipped": skipped})


def build_router(person_cap: int) -> APIRouter:
    """The ``/pose/stream`` WebSocket router; ``person_cap`` bounds ``max_persons``."""
    router = APIRouter()

    @router.websocket("/pose/stream")
    async def pose_stream(
        websocket: WebSocket,
        det_every: Annotated[int | None, Query(ge=1, le=1000)] = None,
        smooth: Annotated[bool | None, Query()] = None,
        max_persons: Annotated[int | None, Query(ge=1, le=person_cap)] = None,
    ) -> None:
        state = websocket.app.state.service
        await serve_stream(
            websocket,
            state,
            det_every=det_every,
            smooth=smooth,
            max_persons=max_persons,
        )

    return router
