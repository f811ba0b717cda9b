"""Access control and fair use: API keys, per-client token buckets and concurrency caps.

One pure ASGI middleware (:class:`AccessMiddleware`) placed inside
:class:`~darkpose.service.api.errors.RequestContextMiddleware` (so refusals carry the request id and
are counted by route).  It decides from the request line and headers alone and answers
401/429 **before the body is read**; with nothing configured :func:`install_access_control`
adds no middleware at all (zero cost).

- **API keys** (``DARKPOSE_API_KEYS`` comma list, ``DARKPOSE_API_KEYS_FILE`` one key per
  line): when any is configured, every route except ``/healthz``, ``/readyz`` and ``/metrics``
  (and ``/demo``, a static page whose WebSocket needs the key)
  needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; otherwise 401 with
  ``WWW-Authenticate: Bearer`` in the usual JSON error shape.  Keys are compared as SHA-256
  digests with :func:`hmac.compare_digest` against every configured key (no early exit, no
  length leak).  A key is never logged; its id is ``k-`` + the first 8 hex digits of its
  SHA-256 (:func:`key_id`).  The file is re-read on SIGHUP and when its (inode, size, mtime)
  changes (checked at most once per second, on requests); a file that no longer parses keeps
  the previous keys (logged).
- **/metrics** stays open unless ``DARKPOSE_METRICS_KEY`` is set (then only that key).
- **Fair use** per client id (the key id; without keys the client IP, taken from
  ``X-Forwarded-For`` only when the peer is in ``DARKPOSE_TRUSTED_PROXIES``): a token bucket of
  ``DARKPOSE_RATE_LIMIT`` requests/s with burst ``DARKPOSE_RATE_BURST`` and a cap of
  ``DARKPOSE_MAX_INFLIGHT_PER_CLIENT`` concurrent requests.  Over either: 429 +
  ``Retry-After``.  Only admitted requests take a token.
- **Metrics** (bounded labels: the configured keys' ids, or ``anonymous`` without keys, never
  an IP): ``darkpose_client_requests_total{client}``,
  ``darkpose_client_throttled_total{client,reason}`` (reason ∈ rate, concurrency),
  ``darkpose_client_inflight{client}``, ``darkpose_unauthorized_total{reason}`` (reason ∈
  missing, invalid).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkpose.service.api.errors import error_response, request_id_of
from darkpose.service.core.errors import DarkPoseError
from darkpose.service.settings import Settings

#: Not ``__name__``: ``darkpose.service.api.access`` is the per-request log line's logger
#: (:class:`~darkpose.service.api.errors.RequestContextMiddleware`, README "Logs").
logger = logging.getLogger("darkpose.service.api.access_control")

#: Paths that never need a key and never count against a client (probes; the static demo page,
#: served only with DARKPOSE_DEMO=true, whose WebSocket asks for the key itself).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/demo"})
METRICS_PATH = "/metrics"
#: Client label of every request when no API keys are configured (never an IP).
ANONYMOUS = "anonymous"
#: Seconds between two stat() calls of the key file (on requests).
FILE_CHECK_INTERVAL_S = 1.0
#: Most clients whose token bucket is remembered (least recently seen are forgotten).
MAX_TRACKED_CLIENTS = 100_000
#: Keys shorter than this are accepted with a warning at load.
MIN_KEY_LENGTH = 16
#: Seconds during which repeated refusals of one client are not logged again.
LOG_EVERY_S = 60.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AccessConfigError(DarkPoseError):
    """An API key setting or key file that cannot be used (the service refuses to start)."""

    code = "config_error"


def key_id(key: str | bytes) -> str:
    """The loggable id of a key: ``k-`` + the first 8 hex digits of its SHA-256."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return "k-" + hashlib.sha256(raw).hexdigest()[:8]


def _check_key(key: str, where: str) -> str:
    if not key or any(not (0x21 <= ord(ch) <= 0x7E) for ch in key):
        raise AccessConfigError(
            f"{where}: expected a key of printable ASCII without spaces, got "
            f"{len(key)} characters including spaces or non-ASCII ones (key id {key_id(key)})"
        )
    return key


def parse_key_list(text: str) -> list[str]:
    """``DARKPOSE_API_KEYS``: comma-separated keys (spaces around them ignored)."""
    return [
        _check_key(part.strip(), f"DARKPOSE_API_KEYS item {i}")
        for i, part in enumerate(text.split(","), start=1)
        if part.strip()
    ]


def parse_key_file(text: str, source: str = "key file") -> list[str]:
    """One key per line; blank lines and lines starting with ``#`` are skipped; a key may be
    followed by whitespace and a ``# comment``.  Raises :class:`AccessConfigError` naming the
    line (never the key)."""
    keys = []
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, *more = stripped.split(None, 1)
        rest = more[0] if more else ""
        if rest and not rest.startswith("#"):
            raise AccessConfigError(
                f"{source} line {n}: expected one key optionally followed by '# comment', "
                f"got more words after the key"
            )
        keys.append(_check_key(key, f"{source} line {n}"))
    return keys


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class KeyStore:
    """The configured API keys (inline + file), looked up in constant time.

    ``enabled`` is fixed at construction: keys inline or a key file configured (an empty or
    unreadable file then refuses everyone: fail closed, never open).
    """

    def __init__(
        self,
        inline: Sequence[str] = (),
        path: Path | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = FILE_CHECK_INTERVAL_S,
    ) -> None:
        self.inline = list(inline)
        self.path = path
        self.enabled = bool(self.inline) or path is not None
        self._clock = clock
        self._check_interval = check_interval
        self._next_check = 0.0
        self._file_sig: tuple[int, int, int] | None = None
        self._entries: list[tuple[bytes, str]] = []
        self.reload_count = 0
        if path is not None:
            self._file_sig = self._stat()
            if self._file_sig is None:
                raise AccessConfigError(
                    f"DARKPOSE_API_KEYS_FILE: expected a readable file, got nothing at {path}"
                )
            self._set(self.inline + parse_key_file(self._read(), str(path)))
        else:
            self._set(self.inline)
        self._next_check = self._clock() + self._check_interval

    @property
    def ids(self) -> list[str]:
        """The configured keys' ids (sorted): the bounded set of client metric labels."""
        return sorted({kid for _, kid in self._entries})

    def _set(self, keys: Iterable[str]) -> None:
        seen: dict[bytes, str] = {}
        short = []
        for k in keys:
            raw = k.encode("ascii")
            seen[_digest(raw)] = key_id(raw)
            if len(raw) < MIN_KEY_LENGTH:
                short.append(key_id(raw))
        self._entries = list(seen.items())
        if short:
            logger.warning(
                "API key(s) %s shorter than %d characters: use long random keys "
                "(e.g. `openssl rand -hex 24`)",
                ", ".join(sorted(set(short))),
                MIN_KEY_LENGTH,
            )

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> str:
        if self.path is None:
            return ""
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessConfigError(
                f"DARKPOSE_API_KEYS_FILE: expected a readable UTF-8 file, got "
                f"{type(exc).__name__} for {self.path}"
            ) from exc

    def reload(self, reason: str = "request") -> bool:
        """Re-read the key file now; on error keep the current keys.  True when it loaded."""
        if self.path is None:
            return False
        self._file_sig = self._stat()
        try:
            keys = parse_key_file(self._read(), str(self.path))
        except AccessConfigError as exc:
            logger.error("API keys not reloaded (%s), keeping %d: %s", reason, len(self), exc)
            return False
        before = set(self.ids)
        self._set(self.inline + keys)
        after = set(self.ids)
        self.reload_count += 1
        logger.info(
            "API keys reloaded (%s) from %s: %d keys, added %s, removed %s",
            reason,
            self.path,
            len(self),
            sorted(after - before) or "none",
            sorted(before - after) or "none",
        )
        return True

    def maybe_reload(self) -> None:
        """Reload when the file's (inode, size, mtime) changed; stat at most once per
        ``check_interval`` seconds."""
        if self.path is None:
            return
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._check_interval
        if self._stat() != self._file_sig:
            self.reload("file changed")

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, presented: bytes) -> str | None:
        """The id of the configured key equal to ``presented``, else None (constant time in
        the key's content: digests compared with every entry, no early exit)."""
        d = _digest(presented)
        found: str | None = None
        for digest, kid in self._entries:
            if hmac.compare_digest(d, digest):
                found = kid
        return found


class TokenBuckets:
    """One token bucket per client: ``rate`` tokens/s, at most ``burst`` stored.

    Bounded: the least recently seen client is forgotten past ``max_clients`` (it comes back
    with a full bucket).  ``clock`` is injected for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise AccessConfigError(
                f"rate limit: expected rate > 0 and burst >= 1, got rate {rate}, burst {burst}"
            )
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - last) * self.rate)

    def wait_time(self, client: str) -> float:
        """Seconds until ``client`` has one token (0.0: it has one now).  Takes nothing."""
        level = self._level(client, self._clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def take(self, client: str) -> None:
        """Spend one token (call after :meth:`wait_time` said 0)."""
        now = self._clock()
        self._buckets[client] = (self._level(client, now) - 1.0, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def parse_networks(text: str) -> list[IPNetwork]:
    """``DARKPOSE_TRUSTED_PROXIES``: comma-separated addresses or CIDR networks."""
    nets = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise AccessConfigError(
                f"DARKPOSE_TRUSTED_PROXIES: expected IP addresses or CIDR networks, got {part!r}"
            ) from exc
    return nets


def _ip(text: str) -> IPAddress | None:
    t = text.strip()
    if t.startswith("[") and "]" in t:  # [v6]:port
        t = t[1 : t.index("]")]
    elif t.count(":") == 1:  # v4:port
        t = t.split(":", 1)[0]
    try:
        return ipaddress.ip_address(t)
    except ValueError:
        return None


def _trusted(addr: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The client address: ``peer``, unless ``peer`` is a trusted proxy; then the rightmost
    ``X-Forwarded-For`` hop that is not a trusted proxy (the leftmost when all are).  An
    unparseable hop stops the walk at the last trusted address (a forged header cannot mint
    arbitrary client ids)."""
    peer_ip = _ip(peer)
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    current = str(peer_ip)
    for hop in reversed(hops):
        addr = _ip(hop)
        if addr is None:
            return current
        current = str(addr)
        if not _trusted(addr, trusted):
            return current
    return current


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    addr = _ip(host)
    return addr is not None and addr.is_loopback


class AccessMetrics:
    """The access-control metrics, registered in the app's registry (bounded labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.client_requests = Counter(
            "darkpose_client_requests",
            "Requests per client (configured key id, or 'anonymous' without keys) that passed "
            "authentication, admitted or throttled",
            ["client"],
            registry=registry,
        )
        self.throttled = Counter(
            "darkpose_client_throttled",
            "429 refusals per client and reason (rate, concurrency)",
            ["client", "reason"],
            registry=registry,
        )
        self.inflight = Gauge(
            "darkpose_client_inflight",
            "Requests of a client being served",
            ["client"],
            registry=registry,
        )
        self.unauthorized = Counter(
            "darkpose_unauthorized",
            "401 refusals by reason (missing, invalid)",
            ["reason"],
            registry=registry,
        )


class AccessPolicy:
    """The access rules of one app (keys, metrics key, fair-use limits, trusted proxies)."""

    def __init__(
        self,
        *,
        keys: KeyStore,
        metrics_key: str | None = None,
        buckets: TokenBuckets | None = None,
        max_inflight_per_client: int = 0,
        trusted_proxies: Sequence[IPNetwork] = (),
        retry_after_s: float = 1.0,
        metrics: AccessMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self._metrics_digest = _digest(metrics_key.encode("ascii")) if metrics_key else None
        self.buckets = buckets
        self.max_inflight = int(max_inflight_per_client)
        self.trusted = list(trusted_proxies)
        self.retry_after_s = float(retry_after_s)
        self.metrics = metrics
        self._clock = clock
        self._inflight: dict[str, int] = {}
        self._last_logged: dict[tuple[str, str], float] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: CollectorRegistry | None = None
    ) -> AccessPolicy | None:
        """The policy of ``settings``, or None when nothing is configured (no middleware)."""
        inline = parse_key_list(settings.api_keys.get_secret_value())
        keys = KeyStore(inline, settings.api_keys_file)
        metrics_key = (
            settings.metrics_key.get_secret_value().strip() if settings.metrics_key else ""
        )
        if metrics_key:
            _check_key(metrics_key, "DARKPOSE_METRICS_KEY")
        buckets = None
        if settings.rate_limit > 0:
            burst = settings.rate_burst or max(1, math.ceil(settings.rate_limit))
            buckets = TokenBuckets(settings.rate_limit, burst)
        trusted = parse_networks(settings.trusted_proxies)
        if not (
            keys.enabled or metrics_key or buckets is not None or settings.max_inflight_per_client
        ):
            return None
        policy = cls(
            keys=keys,
            metrics_key=metrics_key or None,
            buckets=buckets,
            max_inflight_per_client=settings.max_inflight_per_client,
            trusted_proxies=trusted,
            retry_after_s=settings.retry_after_s,
            metrics=AccessMetrics(registry) if registry is not None else None,
        )
        logger.info("access control: %s", policy.describe())
        return policy

    def describe(self) -> str:
        """One line for the start-up log (key ids, never keys)."""
        parts = []
        if self.keys.enabled:
            src = f" (file {self.keys.path})" if self.keys.path else ""
            parts.append(f"{len(self.keys)} API key(s){src}: {', '.join(self.keys.ids) or '-'}")
        else:
            parts.append("no API keys")
        parts.append("/metrics behind its key" if self._metrics_digest else "/metrics open")
        if self.buckets is not None:
            parts.append(f"rate {self.buckets.rate:g}/s burst {self.buckets.burst} per client")
        if self.max_inflight:
            parts.append(f"at most {self.max_inflight} in flight per client")
        if self.trusted:
            parts.append(f"X-Forwarded-For from {', '.join(str(n) for n in self.trusted)}")
        return "; ".join(parts)

    # --- decisions ------------------------------------------------------------------------
    def metrics_allowed(self, presented: Sequence[bytes]) -> bool | None:
        """None: /metrics is open; else whether one of ``presented`` is the metrics key."""
        if self._metrics_digest is None:
            return None
        ok = False
        for p in presented:
            if hmac.compare_digest(_digest(p), self._metrics_digest):
                ok = True
        return ok

    def authenticate(self, presented: Sequence[bytes]) -> str | None:
        """The key id of the first presented key that is configured, else None."""
        self.keys.maybe_reload()
        found = None
        for p in presented:
            kid = self.keys.lookup(p)
            if kid is not None and found is None:
                found = kid
        return found

    def admit(self, bucket_client: str) -> tuple[str, float] | None:
        """None: admitted (a token taken, one slot held; call :meth:`release`).  Else
        ``(reason, retry_after_seconds)`` with reason ∈ concurrency, rate."""
        if self.max_inflight and self._inflight.get(bucket_client, 0) >= self.max_inflight:
            return "concurrency", self.retry_after_s
        if self.buckets is not None:
            wait = self.buckets.wait_time(bucket_client)
            if wait > 0:
                return "rate", wait
            self.buckets.take(bucket_client)
        self._inflight[bucket_client] = self._inflight.get(bucket_client, 0) + 1
        return None

    def release(self, bucket_client: str) -> None:
        n = self._inflight.get(bucket_client, 0) - 1
        if n > 0:
            self._inflight[bucket_client] = n
        else:
            self._inflight.pop(bucket_client, None)

    def inflight(self, bucket_client: str) -> int:
        return self._inflight.get(bucket_client, 0)

    def should_log(self, who: str, what: str) -> bool:
        """At most one log line per (who, what) per :data:`LOG_EVERY_S` (bounded memory)."""
        now = self._clock()
        k = (who, what)
        last = self._last_logged.get(k)
        if last is not None and now - last < LOG_EVERY_S:
            return False
        if len(self._last_logged) > 10_000:
            self._last_logged.clear()
        self._last_logged[k] = now
        return True


def presented_keys(scope: Scope) -> list[bytes]:
    """The credentials of a request: the ``Authorization: Bearer`` token and ``X-API-Key``."""
    out = []
    for name, value in scope.get("headers", []):
        lname = name.lower()
        if lname == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                out.append(token.strip())
        elif lname == b"x-api-key" and value.strip():
            out.append(value.strip())
    return out


def _forwarded_for(scope: Scope) -> list[str]:
    return [
        v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-forwarded-for"
    ]


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "") or "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class _RouteLabel:
    """Stands in for ``scope["route"]`` of a refused request (only its ``path`` is read)."""

    def __init__(self, path: str) -> None:
        self.path = path


class AccessMiddleware:
    """Pure ASGI: authenticate, then per-client fair use, before the app reads the body.

    ``route_paths``: returns the app's route paths (called once, on the first refusal), used
    only to label a refused request with its route, so that it counts as
    ``darkpose_requests_total{route="/pose",status="401"}`` rather than ``unmatched`` (a
    refusal happens before routing; unknown paths stay ``unmatched``: bounded labels).
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
        self._route_paths_fn = route_paths
        self._route_paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        p = self.policy
        presented = presented_keys(scope)
        if path == METRICS_PATH:
            allowed = p.metrics_allowed(presented)
            if allowed is False:
                await self._unauthorized(scope, receive, send, bool(presented))
                return
            await self.app(scope, receive, send)
            return
        peer = client_ip(_peer(scope), _forwarded_for(scope), p.trusted)
        if p.keys.enabled:
            kid = p.authenticate(presented)
            if kid is None:
                await self._unauthorized(scope, receive, send, bool(presented), peer)
                return
            bucket_client, label = kid, kid
        else:
            bucket_client, label = peer, ANONYMOUS
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
        try:
            await self.app(scope, receive, send)
        finally:
            p.release(bucket_client)
            if m is not None:
                m.inflight.labels(client=label).dec()

    # --- refusals --------------------------------------------------------------------------
    def _label_route(self, scope: Scope) -> None:
        if self._route_paths is None:
            try:
                fn = self._route_paths_fn
                self._route_paths = frozenset(fn() if fn is not None else ())
            except Exception:  # labels must never break a refusal
                logger.exception("route paths for refusal labels unavailable")
                self._route_paths = frozenset()
        path = _route_path(scope)
        if path in self._route_paths:
            scope["route"] = _RouteLabel(path)

    async def _unauthorized(
        self, scope: Scope, receive: Receive, send: Send, had_key: bool, peer: str = ""
    ) -> None:
        reason = "invalid" if had_key else "missing"
        if self.policy.metrics is not None:
            self.policy.metrics.unauthorized.labels(reason=reason).inc()
        rid = request_id_of(scope)
        path = _route_path(scope)
        if self.policy.should_log(peer or _peer(scope), reason):
            logger.info(
                "request %s: 401 %s API key for %s from %s (repeats not logged for %.0f s)",
                rid,
                reason,
                path,
                peer or _peer(scope) or "?",
                LOG_EVERY_S,
            )
        got = "an unknown key" if had_key else "none"
        where = "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        what = "the metrics key" if path == METRICS_PATH else "an API key"
        challenge = 'Bearer realm="darkpose"' + (', error="invalid_token"' if had_key else "")
        self._label_route(scope)
        response = error_response(
            401,
            "unauthorized",
            f"expected {what} in {where}, got {got}",
            rid,
            {"WWW-Authenticate": challenge},
        )
        await response(scope, receive, send)

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
            p.metrics.throttled.labels(client=label, reason=reason).inc()
        retry = max(1, math.ceil(wait))
        rid = request_id_of(scope)
        if p.should_log(client, reason):
            logger.info(
                "request %s: 429 for client %s (%s; repeats not logged for %.0f s)",
                rid,
                client,
                reason,
                LOG_EVERY_S,
            )
        if reason == "concurrency":
            msg = (
                f"too many requests in flight: expected at most {p.max_inflight} at once per "
                f"client, got one more; retry in {retry} s"
            )
        else:
            b = p.buckets
            limit = f"{b.rate:g} requests/s (burst {b.burst})" if b is not None else "the rate"
            msg = f"rate limit: expected at most {limit} per client, got more; retry in {retry} s"
        self._label_route(scope)
        response = error_response(429, "too_many_requests", msg, rid, {"Retry-After": str(retry)})
        await response(scope, receive, send)

    # --- SIGHUP ---------------------------------------------------------------------------
    def _lifespan_receive(self, receive: Receive) -> Receive:
        keys = self.policy.keys

        async def wrapped() -> Message:
            message = await receive()
            if keys.path is None:
                return message
            if message["type"] == "lifespan.startup":
                _install_sighup(keys)
            elif message["type"] == "lifespan.shutdown":
                _remove_sighup()
            return message

        return wrapped


def _install_sighup(keys: KeyStore) -> None:
    sig = getattr(signal, "SIGHUP", None)
    if sig is None:
        return
    try:
        asyncio.get_running_loop().add_signal_handler(sig, keys.reload, "SIGHUP")
    except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread
        logger.debug("no SIGHUP reload of API keys here (%s); file changes still reload", exc)
        return
    logger.debug("SIGHUP reloads the API keys from %s", keys.path)


def _remove_sighup() -> None:
    sig = getattr(signal, "SIGHUP", None)
    if sig is None:
        return
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().remove_signal_handler(sig)


def install_access_control(app: Any, settings: Settings, registry: CollectorRegistry) -> bool:
    """Add :class:`AccessMiddleware` to ``app`` when anything is configured.  Call it *before*
    adding :class:`~darkpose.service.api.errors.RequestContextMiddleware` (so that one wraps it).
    True when installed."""
    policy = AccessPolicy.from_settings(settings, registry)
    if policy is None:
        return False
    app.state.access = policy
    app.add_middleware(
        AccessMiddleware,
        policy=policy,
        route_paths=lambda: app.openapi().get("paths", {}).keys(),
    )
    _document_access(app, policy)
    return True


def _document_access(app: Any, policy: AccessPolicy) -> None:
    """With keys: declare the two key headers in the OpenAPI document (``securitySchemes``)
    on every operation except the open probes and ``/metrics`` (generated clients send them),
    with their 401; with fair-use limits: the 429 on the same operations."""
    keys, limits = policy.keys.enabled, policy.buckets is not None or policy.max_inflight > 0
    if not (keys or limits):
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return dict(app.openapi_schema)
        schema = build()
        if keys:
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                {
                    "bearerKey": {"type": "http", "scheme": "bearer", "description": "API key"},
                    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
            )
        paths = schema.get("paths", {})
        error_content = next(  # the JSON error shape as the app documents its other errors
            (
                r["content"]
                for ops in paths.values()
                for op in ops.values()
                if isinstance(op, dict)
                for code, r in op.get("responses", {}).items()
                if str(code).startswith("5") and isinstance(r, dict) and "content" in r
            ),
            None,
        )

        def doc(text: str) -> dict[str, Any]:
            return {"description": text, **({"content": error_content} if error_content else {})}

        for path, ops in paths.items():
            if path in OPEN_PATHS or path == METRICS_PATH:
                continue
            for op in ops.values():
                if not isinstance(op, dict):
                    continue
                responses = op.setdefault("responses", {})
                if keys:
                    op["security"] = [{"bearerKey": []}, {"apiKeyHeader": []}]
                    responses.setdefault("401", doc("missing or unknown API key"))
                if limits:
                    responses.setdefault("429", doc("over the client's rate or concurrency cap"))
        app.openapi_schema = schema
        return dict(schema)

    app.openapi = openapi


def warn_if_open(settings: Settings, host: str) -> bool:
    """Log one warning when ``host`` is not loopback and no API keys are configured (call once
    when starting to listen).  True when it warned."""
    if is_loopback(host):
        return False
    # the test KeyStore.enabled makes: "," is no key, a key file (even empty) is keys
    if parse_key_list(settings.api_keys.get_secret_value()) or settings.api_keys_file is not None:
        return False
    logger.warning(
        "listening on %s without API keys: anyone who can reach the port can use POST /pose; "
        "set DARKPOSE_API_KEYS_FILE (or DARKPOSE_API_KEYS) - README 'Securing the service'",
        host,
    )
    return True
