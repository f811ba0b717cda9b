"""Who is calling: the client address behind trusted proxies, and loopback checks.

The address comes from uvicorn's :class:`~uvicorn.middleware.proxy_headers.ProxyHeadersMiddleware`
applied as app middleware (so it works under ``darkpose serve`` and behind Ray Serve's proxy
alike): when the peer is a trusted proxy, ``scope["client"]`` becomes the rightmost
``X-Forwarded-For`` hop that is not a trusted proxy.  The trusted proxies are typed networks
(``Settings.trusted_proxies``); each IPv4 network is also trusted in its IPv4-mapped IPv6 form
(``::ffff:10.0.0.2`` from a dual-stack socket).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from starlette.types import Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def trusted_hosts(networks: Sequence[IPNetwork]) -> list[str]:
    """``networks`` as ProxyHeadersMiddleware's ``trusted_hosts`` (CIDR text), each IPv4
    network also in its IPv4-mapped IPv6 form."""
    out = []
    for net in networks:
        out.append(str(net))
        if isinstance(net, ipaddress.IPv4Network):
            mapped = ipaddress.IPv6Address(f"::ffff:{net.network_address}")
            out.append(f"{mapped}/{96 + net.prefixlen}")
    return out


def install_proxy_headers(app: Any, networks: Sequence[IPNetwork]) -> bool:
    """Add ProxyHeadersMiddleware for ``networks`` to ``app`` (nothing when there are none;
    call it after the middleware that must see the resolved client).  True when added."""
    if not networks:
        return False
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_hosts(networks))
    return True


def peer(scope: Scope) -> str:
    """The client address of ``scope`` (after proxy resolution), ``""`` when unknown."""
    client = scope.get("client")
    return str(client[0]) if client else ""


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


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    addr = _ip(host)
    return addr is not None and addr.is_loopback
