"""The access-control ASGI middleware: one key header, authenticate, fair use, before the body.

Placed inside :class:`~darkpose.service.api.errors.RequestContextMiddleware` (refusals carry the
request id and count by route).  It decides from the request line and headers alone and
answers 400/401/429 **before the body is read**.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkpose.service.api.access_control.clients import peer
from darkpose.service.api.access_control.keys import install_sighup, remove_sighup
from darkpose.service.api.access_control.policy import (
    ANONYMOUS,
    LOG_EVERY_S,
    UNAUTHENTICATED,
    AccessPolicy,
)
from darkpose.service.api.errors import error_response, request_id_of
from darkpose.service.api.logsafe import escape, throttle
from darkpose.service.api.work import release_after_work

logger = logging.getLogger(__name__)
throttle(logger)  # 401/429 lines: at most a few per template per 10 s, with the count dropped

#: Paths that never need a key and never count against a client (probes).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/demo"})
METRICS_PATH = "/metrics"
#: ``scope["state"]`` key holding the route path of a request refused before routing.
ROUTE_LABEL = "route_label"
_WHERE = "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def presented_keys(scope: Scope) -> list[bytes]:
    """The credentials of a request: the ``Authorization: Bearer`` token and ``X-API-Key``,
    in header order; the scan stops at the second one (more than one is refused)."""
    out: list[bytes] = []
    for name, value in scope.get("headers", []):
        lname = name.lower()
        if lname == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                continue
            out.append(token.strip())
        elif lname == b"x-api-key" and value.strip():
            out.append(value.strip())
        else:
            continue
        if len(out) > 1:
            break
    return out


def route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "") or "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class AccessMiddleware:
    """Pure ASGI: one key header, failed-auth throttling, authentication, then per-client fair
    use, before the app reads the body.

    ``route_paths``: the app's route paths; a refused request never reaches the router, so
    its path is put in ``scope["state"][ROUTE_LABEL]`` when it is one of them and it counts as
    ``darkpose_requests_total{route="/pose",status="401"}`` rather than ``unmatched``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: AccessPolicy,
        route_paths: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self._route_paths = route_paths
        self._paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        p = self.policy
        address = peer(scope)
        if p.needs_key:
            presented = presented_keys(scope)
            if len(presented) > 1:
                await self._refuse(
                    scope,
                    receive,
                    send,
                    400,
                    "bad_request",
                    f"expected one API key header ({_WHERE}), got several",
                )
                return
            key = presented[0] if presented else None
            guarded = (
                p.metrics_allowed(None) is not None if path == METRICS_PATH else p.keys.enabled
            )
            wait = p.auth_wait(address) if guarded else 0.0
            if wait > 0:
                await self._throttled(scope, receive, send, address, UNAUTHENTICATED, "auth", wait)
                return
        else:
            key = None
        if path == METRICS_PATH:
            if p.metrics_allowed(key) is False:
                p.auth_failed(address)
                await self._unauthorized(scope, receive, send, key is not None, address)
                return
            await self.app(scope, receive, send)
            return
        if p.keys.enabled:
            kid = p.authenticate(key)
            if kid is None:
                p.auth_failed(address)
                await self._unauthorized(scope, receive, send, key is not None, address)
                return
            bucket_client, label = kid, kid
        else:
            bucket_client, label = address, ANONYMOUS
        scope.setdefault("state", {})["client_id"] = bucket_client
        m = p.metrics
        if m is not None:
            m.client_requests.labels(client=label).inc()
        refused = p.admit(bucket_client)
        if refused is not None:
            reason, wait = refused
            await self._throttled(scope, receive, send, bucket_client, label, reason, wait)
            return
        if m is not None:
            m.inflight.labels(client=label).inc()

        def release() -> None:
            p.release(bucket_client)
            if m is not None:
                m.inflight.labels(client=label).dec()

        try:
            await self.app(scope, receive, send)
        finally:  # held until the request's worker has stopped: abandoned work still counts
            release_after_work(scope, release)

    # --- refusals --------------------------------------------------------------------------
    def _label_route(self, scope: Scope) -> None:
        """``scope["state"][ROUTE_LABEL]``: the route path of a refused request when it is one
        of the app's (read once from ``route_paths``), else nothing (``unmatched``)."""
        if self._paths is None:
            try:
                self._paths = frozenset(self._route_paths() if self._route_paths else ())
            except Exception:  # labels must never break a refusal
                logger.exception("route paths for refusal labels unavailable")
                self._paths = frozenset()
        path = route_path(scope)
        if path in self._paths:
            scope.setdefault("state", {})[ROUTE_LABEL] = path

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._label_route(scope)
        response = error_response(status, code, message, request_id_of(scope), headers)
        await response(scope, receive, send)

    async def _unauthorized(
        self, scope: Scope, receive: Receive, send: Send, had_key: bool, address: str
    ) -> None:
        reason = "invalid" if had_key else "missing"
        if self.policy.metrics is not None:
            self.policy.metrics.unauthorized.labels(reason=reason).inc()
        path = route_path(scope)
        if self.policy.should_log(address, reason):
            logger.info(
                "request %s: 401 %s API key for %s from %s (repeats not logged for %.0f s)",
                request_id_of(scope),
                reason,
                escape(path),
                escape(address or "?"),
                LOG_EVERY_S,
            )
        got = "an unknown key" if had_key else "none"
        what = "the metrics key" if path == METRICS_PATH else "an API key"
        challenge = 'Bearer realm="darkpose"' + (', error="invalid_token"' if had_key else "")
        await self._refuse(
            scope,
            receive,
            send,
            401,
            "unauthorized",
            f"expected {what} in {_WHERE}, got {got}",
            {"WWW-Authenticate": challenge},
        )

    async def _throttled(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: str,
        label: str,
        reason: str,
        wait: float,
    ) -> None:
        p = self.policy
        if p.metrics is not None:
            metric_reason = "auth_failures" if reason == "auth" else reason
            p.metrics.throttled.labels(client=label, reason=metric_reason).inc()
        retry = max(1, math.ceil(wait))
        if p.should_log(client, reason):
            logger.info(
                "request %s: 429 for client %s (%s; repeats not logged for %.0f s)",
                request_id_of(scope),
                escape(client),
                reason,
                LOG_EVERY_S,
            )
        if reason == "concurrency":
            msg = (
                f"too many requests in flight: expected at most {p.max_inflight} at once per "
                f"client, got one more; retry in {retry} s"
            )
        elif reason == "auth":
            b = p.auth_failures
            limit = f"{b.rate:g}/s (burst {b.burst})" if b is not None else "the limit"
            msg = (
                f"too many failed authentications: expected at most {limit} per address, "
                f"got more; retry in {retry} s"
            )
        else:
            b = p.buckets
            limit = f"{b.rate:g} requests/s (burst {b.burst})" if b is not None else "the rate"
            msg = f"rate limit: expected at most {limit} per client, got more; retry in {retry} s"
        await self._refuse(
            scope, receive, send, 429, "too_many_requests", msg, {"Retry-After": str(retry)}
        )

    # --- SIGHUP ---------------------------------------------------------------------------
    def _lifespan_receive(self, receive: Receive) -> Receive:
        keys = self.policy.keys

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                install_sighup(keys)
            elif message["type"] == "lifespan.shutdown":
                remove_sighup(keys)
            return message

        return wrapped
