"""The access rules of one app and their metrics: keys, metrics key, fair use, failed-auth
throttling; built from :class:`~darkpose.service.settings.Settings` (None: nothing configured)."""

from __future__ import annotations

import hmac
import logging
import math
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from darkpose.service.api.access_control.clients import is_loopback
from darkpose.service.api.access_control.fair_use import InflightCounts, TokenBuckets
from darkpose.service.api.access_control.keys import (
    KeyStore,
    check_key,
    enforce_min_length,
    key_digest,
    parse_key_list,
)
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)

#: Client label of every request when no API keys are configured (never an IP).
ANONYMOUS = "anonymous"
#: Client label of refusals before authentication (failed-authentication throttling).
UNAUTHENTICATED = "unauthenticated"
#: Seconds during which repeated refusals of one client are not logged again.
LOG_EVERY_S = 60.0


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
            "429 refusals per client and reason (rate, concurrency; auth_failures for "
            "client 'unauthenticated')",
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
    """Keys, metrics key, fair-use limits and failed-auth buckets of one app."""

    def __init__(
        self,
        *,
        keys: KeyStore,
        metrics_key: str | None = None,
        buckets: TokenBuckets | None = None,
        max_inflight_per_client: int = 0,
        auth_failures: TokenBuckets | None = None,
        retry_after_s: float = 1.0,
        metrics: AccessMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self._metrics_digest = key_digest(metrics_key, keys.secret) if metrics_key else None
        self.buckets = buckets
        self.inflight = InflightCounts(max_inflight_per_client)
        self.auth_failures = auth_failures
        self.retry_after_s = float(retry_after_s)
        self.metrics = metrics
        self._clock = clock
        self._last_logged: dict[tuple[str, str], float] = {}

    @property
    def max_inflight(self) -> int:
        return self.inflight.limit

    @property
    def metrics_guarded(self) -> bool:
        """``/metrics`` needs the metrics key."""
        return self._metrics_digest is not None

    @property
    def needs_key(self) -> bool:
        """Some route needs a key (API keys or the metrics key)."""
        return self.keys.enabled or self.metrics_guarded

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: CollectorRegistry | None = None
    ) -> AccessPolicy | None:
        """The policy of ``settings``, or None when nothing is configured (no middleware).
        :class:`AccessConfigError` for unusable keys (too short, unreadable file)."""
        secret = _key_id_secret(settings)
        inline = parse_key_list(settings.api_keys.get_secret_value(), secret)
        keys = KeyStore(
            inline, settings.api_keys_file, secret=secret, allow_short=settings.allow_short_keys
        )
        metrics_key = (
            settings.metrics_key.get_secret_value().strip() if settings.metrics_key else ""
        )
        if metrics_key:
            check_key(metrics_key, "DARKPOSE_METRICS_KEY", secret)
            enforce_min_length(
                [metrics_key], "DARKPOSE_METRICS_KEY", secret, settings.allow_short_keys
            )
        buckets = None
        if settings.rate_limit > 0:
            burst = settings.rate_burst or max(1, math.ceil(settings.rate_limit))
            buckets = TokenBuckets(settings.rate_limit, burst)
        if not (
            keys.enabled or metrics_key or buckets is not None or settings.max_inflight_per_client
        ):
            return None
        failures = None
        if (keys.enabled or metrics_key) and settings.auth_failure_rate > 0:
            failures = TokenBuckets(settings.auth_failure_rate, settings.auth_failure_burst)
        if (keys.enabled or metrics_key) and settings.key_id_secret is None:
            logger.warning(
                "key ids are keyed with a random per-process secret: they differ between "
                "replicas and restarts; set DARKPOSE_KEY_ID_SECRET (shared by all replicas)"
            )
        policy = cls(
            keys=keys,
            metrics_key=metrics_key or None,
            buckets=buckets,
            max_inflight_per_client=settings.max_inflight_per_client,
            auth_failures=failures,
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
        if self.auth_failures is not None:
            b = self.auth_failures
            parts.append(f"failed authentications {b.rate:g}/s burst {b.burst} per address")
        return "; ".join(parts)

    # --- decisions ------------------------------------------------------------------------
    def metrics_allowed(self, presented: bytes | None) -> bool | None:
        """None: /metrics is open; else whether ``presented`` is the metrics key."""
        if self._metrics_digest is None:
            return None
        if presented is None:
            return False
        return hmac.compare_digest(key_digest(presented, self.keys.secret), self._metrics_digest)

    def authenticate(self, presented: bytes | None) -> str | None:
        """The key id of ``presented`` when it is configured, else None."""
        self.keys.maybe_reload()
        return None if presented is None else self.keys.lookup(presented)

    def auth_wait(self, address: str) -> float:
        """Seconds ``address`` must wait before its next authentication attempt (0: now)."""
        return 0.0 if self.auth_failures is None else self.auth_failures.wait_time(address)

    def auth_failed(self, address: str) -> None:
        if self.auth_failures is not None:
            self.auth_failures.take(address)

    def admit(self, bucket_client: str) -> tuple[str, float] | None:
        """None: admitted (a token taken, one slot held; call :meth:`release`).  Else
        ``(reason, retry_after_seconds)`` with reason ∈ concurrency, rate."""
        if self.inflight.full(bucket_client):
            return "concurrency", self.retry_after_s
        if self.buckets is not None:
            wait = self.buckets.wait_time(bucket_client)
            if wait > 0:
                return "rate", wait
            self.buckets.take(bucket_client)
        self.inflight.acquire(bucket_client)
        return None

    def release(self, bucket_client: str) -> None:
        self.inflight.release(bucket_client)

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


def _key_id_secret(settings: Settings) -> bytes:
    if settings.key_id_secret is not None:
        return settings.key_id_secret.get_secret_value().encode("utf-8")
    return os.urandom(32)


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
        "set DARKPOSE_API_KEYS_FILE (or DARKPOSE_API_KEYS) - docs/security.md",
        host,
    )
    return True
