"""Access control and fair use: API keys, per-client token buckets and concurrency caps.

One pure ASGI middleware (:class:`AccessMiddleware`) decides from the request line and headers
alone and answers 400/401/429 **before the body is read**; with nothing configured
:func:`install_access_control` adds no middleware at all (zero cost).  By job:

- :mod:`.keys`: API keys (``DARKPOSE_API_KEYS``, ``DARKPOSE_API_KEYS_FILE``), looked up by one
  keyed hash (constant cost), ids keyed by ``DARKPOSE_KEY_ID_SECRET``; reload on change and
  SIGHUP; keys under 16 characters refused unless ``DARKPOSE_ALLOW_SHORT_KEYS``.
- :mod:`.fair_use`: token buckets (``DARKPOSE_RATE_LIMIT``/``_BURST`` per client, and
  ``DARKPOSE_AUTH_FAILURE_RATE``/``_BURST`` of failed authentications per address) and the
  per-client concurrency cap (``DARKPOSE_MAX_INFLIGHT_PER_CLIENT``).
- :mod:`.clients`: the client address (uvicorn's ProxyHeadersMiddleware for
  ``DARKPOSE_TRUSTED_PROXIES``).
- :mod:`.policy`: the rules of one app and their metrics (bounded labels: configured key ids,
  ``anonymous``, ``unauthenticated``; never an IP).
- :mod:`.middleware`: the ASGI middleware; :mod:`.openapi`: the documented security.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from darkpose.service.api.access_control.clients import install_proxy_headers, is_loopback
from darkpose.service.api.access_control.fair_use import TokenBuckets
from darkpose.service.api.access_control.keys import (
    AccessConfigError,
    KeyStore,
    key_id,
    parse_key_file,
    parse_key_list,
)
from darkpose.service.api.access_control.middleware import AccessMiddleware, presented_keys
from darkpose.service.api.access_control.openapi import document_access
from darkpose.service.api.access_control.policy import AccessPolicy, warn_if_open
from darkpose.service.settings import Settings

__all__ = [
    "AccessConfigError",
    "AccessMiddleware",
    "AccessPolicy",
    "KeyStore",
    "TokenBuckets",
    "install_access_control",
    "is_loopback",
    "key_id",
    "parse_key_file",
    "parse_key_list",
    "presented_keys",
    "warn_if_open",
]


def install_access_control(app: Any, settings: Settings, registry: CollectorRegistry) -> bool:
    """Add :class:`AccessMiddleware` to ``app`` when anything is configured, and (with trusted
    proxies) uvicorn's ProxyHeadersMiddleware outside it.  Call it *before* adding
    :class:`~darkpose.service.api.errors.RequestContextMiddleware` (so that one wraps both).
    True when access control is installed."""
    policy = AccessPolicy.from_settings(settings, registry)
    if policy is not None:
        app.state.access = policy
        app.add_middleware(
            AccessMiddleware,
            policy=policy,
            route_paths=lambda: app.openapi().get("paths", {}).keys(),
        )
        document_access(app, policy)
    install_proxy_headers(app, settings.trusted_proxies)
    return policy is not None
