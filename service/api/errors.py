"""The one place where exceptions become HTTP answers.

Every error body has the shape ``{"error": {"code": str, "message": str}, "request_id": str}``
and every response carries the ``X-Request-ID`` header (the caller's, when it sent a sane one,
otherwise a fresh id).  ``DarkPoseError`` subclasses map to their ``status_code``;
``Overloaded`` adds ``Retry-After``; FastAPI's request validation errors become 422 with the
same shape; anything unexpected is logged with the request id and answered 500 by
:class:`RequestContextMiddleware` (never a bare traceback).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkpose.service.api.logsafe import RepeatFilter, escape, throttle
from darkpose.service.core.errors import DarkPoseError, describe_validation_errors

logger = logging.getLogger(__name__)
#: One line per request (``RequestContextMiddleware(access_log=True)``, setting ``access_log``).
access_logger = logging.getLogger("darkpose.service.api.access")
ACCESS_LINE = "%s %s %d %.1f ms id=%s"
#: The access line of a 401/429: throttled (a flood of refusals writes a few lines per 10 s
#: and the count of the others, see :mod:`darkpose.service.api.logsafe`).
REFUSED_LINE = "%s %s %d %.1f ms id=%s refused"
throttle(access_logger, RepeatFilter(only=frozenset({REFUSED_LINE})))

REQUEST_ID_HEADER = "X-Request-ID"
#: Paths of health probes and metrics scrapes: access-logged at DEBUG, not INFO.
QUIET_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz", "/metrics"})
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

#: HTTP status → error code for errors that do not come from our own hierarchy.
_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    500: "internal_error",
    503: "unavailable",
}


def new_request_id(incoming: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and printable, else a fresh hex id."""
    if incoming and _SANE_REQUEST_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str:
    """The id :class:`RequestContextMiddleware` stored for this request (``"-"`` if none)."""
    state = scope.get("state") or {}
    return str(state.get("request_id", "-"))


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    """``{"error": {"code", "message"}, "request_id"}``."""
    return {"error": {"code": code, "message": message}, "request_id": request_id}


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    hdrs = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(error_body(code, message, request_id), status_code=status, headers=hdrs)


def response_for_error(exc: DarkPoseError, request_id: str) -> JSONResponse:
    """Map one of our typed errors to its JSON response (``Retry-After`` for overload)."""
    headers: dict[str, str] = {}
    if exc.status_code == 503:  # Overloaded (its retry_after) and NotReady
        retry = getattr(exc, "retry_after", 1.0)
        headers["Retry-After"] = str(max(1, math.ceil(float(retry))))
    if exc.status_code >= 500 and exc.status_code != 503:
        logger.error(
            "request %s failed: %s: %s", request_id, type(exc).__name__, escape(exc.message, 1000)
        )
    return error_response(exc.status_code, exc.code, exc.message, request_id, headers)


def _format_loc(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("query", "body", "path", "header")]
    where = loc[0] if loc else "request"
    return f"{where} parameter {'.'.join(parts)!r}" if parts else str(where)


def format_validation_errors(errors: Sequence[Any]) -> str:
    """One readable line per pydantic error: ``query parameter 'flip': expected true or false
    (also 1/0, yes/no, on/off), got "perhaps"``."""
    return describe_validation_errors(errors, _format_loc) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers for our errors, validation errors and HTTP exceptions."""

    async def on_darkpose_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, DarkPoseError):  # registration guarantees it; narrows the type
            raise exc
        return response_for_error(exc, request_id_of(request.scope))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        errs = exc.errors() if isinstance(exc, RequestValidationError) else []
        return error_response(
            422, "invalid_parameter", format_validation_errors(errs), request_id_of(request.scope)
        )

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
        detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
        headers = dict(exc.headers or {}) if isinstance(exc, StarletteHTTPException) else {}
        code = _HTTP_CODES.get(status, "http_error")
        return error_response(status, code, str(detail), request_id_of(request.scope), headers)

    app.add_exception_handler(DarkPoseError, on_darkpose_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)


class RequestContextMiddleware:
    """Pure ASGI middleware: request id, ``X-Request-ID`` echo, last-resort 500 JSON, and
    (``access_log``) one INFO line per request on the ``darkpose.service.api.access`` logger:
    ``POST /pose 200 41.2 ms id=<request id>``.  Health probes and metrics scrapes
    (:data:`QUIET_PATHS`: ``/healthz``, ``/readyz``, ``/metrics``) are logged at DEBUG, so an
    orchestrator polling them does not fill the log (an unhandled error is logged anyway).

    ``on_done(scope, status, seconds)`` is called once per HTTP request (metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        on_done: Callable[[Scope, int, float], None] | None = None,
        clock: Callable[[], float] | None = None,
        access_log: bool = True,
    ) -> None:
        import time

        self.app = app
        self.on_done = on_done
        self.clock = clock or time.perf_counter
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name.lower() == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = new_request_id(incoming)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False
        status = 500
        t0 = self.clock()

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:  # shutdown past the grace period: 503 in the usual shape
            status = 503
            if not started:
                response = error_response(
                    503,
                    "shutting_down",
                    "the server is shutting down and cancelled this request; expected an "
                    "answer within the grace period, got none; retry",
                    request_id,
                    {"Retry-After": "1", "Connection": "close"},
                )
                try:
                    await response(scope, receive, send_wrapper)
                except Exception:  # noqa: BLE001 - the connection may be gone already
                    logger.debug("request %s: no 503 sent at shutdown", request_id)
            raise
        except Exception as exc:  # the last line of defence: log, answer 500 JSON
            logger.exception("request %s: unhandled %s", request_id, type(exc).__name__)
            status = 500
            if not started:
                response = error_response(
                    500,
                    "internal_error",
                    f"internal error ({type(exc).__name__}); quote request id {request_id}",
                    request_id,
                )
                await response(scope, receive, send_wrapper)
        finally:
            seconds = self.clock() - t0
            path = str(scope.get("path", "-"))
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            if self.access_log and access_logger.isEnabledFor(level):
                access_logger.log(
                    level,
                    REFUSED_LINE if status in (401, 429) else ACCESS_LINE,
                    escape(scope.get("method", "-")),
                    escape(path),
                    status,
                    1000.0 * seconds,
                    request_id,
                )
            if self.on_done is not None:
                try:
                    self.on_done(scope, status, seconds)
                except Exception:  # metrics must never break a response
                    logger.exception("metrics hook failed")
