"""Connection-level limits for ``darkpose serve``: uvicorn's httptools protocol with guards.

uvicorn holds a connection that never sends a request for as long as the client likes, accepts
connections until the process runs out of file descriptors (then ``accept()`` fails in a loop
that logs a traceback per retry), lets a client leave a response unread forever (the whole
response stays in the transport's buffer) and runs a parser callback per body chunk however
small the chunks are.  :func:`guarded_protocol` returns a subclass of
:class:`uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` that

* keeps at most ``max_connections`` open: a new connection beyond that evicts the connection
  that has waited longest without a complete request head (a slowloris or idle socket), or is
  closed at once when every open connection is busy (no per-connection log line; one warning
  per 10 s says how many were evicted or refused);
* aborts a connection that has not sent a complete request head within ``header_timeout_s``
  of connecting (or of its first byte, for the next request on a kept-alive connection;
  uvicorn's keep-alive timeout covers the idle time between requests);
* aborts a connection whose response has not drained for ``write_timeout_s`` (the transport's
  buffer, e.g. a 90 MB overlay, is freed with it);
* cuts an upload whose body arrives in more than 1024 chunks of ``min_body_chunk_bytes`` bytes
  or less on average (1-byte chunked uploads otherwise cost a Python callback per byte on the
  event loop).
* caps the request head while it is parsed, as nginx's ``large_client_header_buffers``
  does: a URL over ``max_url_bytes`` is answered 414, a header line over ``max_header_bytes``,
  more than ``max_header_count`` headers or a head over ``max_headers_bytes`` 431 (JSON, the
  service's error shape; then the connection is closed).  The head's bytes are counted as
  they arrive, so a header streamed without end costs at most ``max_headers_bytes`` plus one
  read of parsing before the connection is cut.

The subclass relies on uvicorn internals (``parser``, ``url``, ``headers``, the parser
callbacks, ``send_400_response``): the uvicorn range in ``pyproject.toml`` is the one it was
written against (``tests/api/test_hostile_edge.py`` fails outside it).

:func:`prepare_process` raises the soft open-file limit to the hard one, derives the effective
connection cap from it (so ``accept()`` never runs out of descriptors) and installs a filter
that lets at most one ``accept`` error per 10 s through to the log.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from darkpose.service.api.logsafe import escape, throttle
from darkpose.service.api.metrics import edge_rejections
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)

#: File descriptors kept free for models, logs, sockets to clients of the service itself.
FD_RESERVE = 64
#: Chunks an upload may arrive in before the mean chunk size is checked.
CHUNK_GRACE = 1024
#: Seconds a connection refused for its head keeps draining the client's bytes before closing.
LINGER_S = 2.0
_LOG_EVERY_S = 10.0
_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits a :class:`GuardedHttpToolsProtocol` enforces (the settings of the same names;
    ``write_timeout_s`` is ``response_write_timeout_s``)."""

    max_connections: int
    header_timeout_s: float
    write_timeout_s: float
    min_body_chunk_bytes: int
    max_url_bytes: int
    max_header_bytes: int
    max_headers_bytes: int
    max_header_count: int

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int) -> ConnectionLimits:
        """The limits of ``settings``, with the connection cap of :func:`prepare_process`."""
        return cls(
            max_connections=max_connections,
            header_timeout_s=settings.header_timeout_s,
            write_timeout_s=settings.response_write_timeout_s,
            min_body_chunk_bytes=settings.min_body_chunk_bytes,
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_headers_bytes=settings.max_headers_bytes,
            max_header_count=settings.max_header_count,
        )


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing an oversized request head."""


class _RateLimitedLog:
    """At most one log line per ``every`` seconds, with the count of suppressed events."""

    def __init__(self, every: float = _LOG_EVERY_S) -> None:
        self.every = every
        self.last = -1e9
        self.suppressed = 0

    def hit(self) -> int | None:
        """The number of events since the last line when a line is due now, else None."""
        now = time.monotonic()
        self.suppressed += 1
        if now - self.last < self.every:
            return None
        self.last = now
        n, self.suppressed = self.suppressed, 0
        return n


_refused_log = _RateLimitedLog()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; ``limits`` is set by :func:`guarded_protocol`."""

    limits: ConnectionLimits
    #: connections of this server without a complete request head, oldest first (per subclass)
    waiting: dict[GuardedHttpToolsProtocol, float] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._chunks = 0
        self._body_bytes = 0
        self._cut = False
        self._head_open = True  # between a request's first byte and its complete head
        self._head_bytes = 0
        self._header_count = 0
        self._header_total = 0
        self._refusal: tuple[int, str, str] | None = None
        self._linger: asyncio.TimerHandle | None = None

    # --- connections ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            if self.waiting:  # evict the connection idle the longest
                oldest = next(iter(self.waiting))
                self.waiting.pop(oldest, None)
                edge_rejections["evicted"] += 1
                oldest.transport.abort()
            else:
                self._refused = True
                edge_rejections["refused"] += 1
                transport.abort()
            n = _refused_log.hit()
            if n is not None:
                logger.warning(
                    "connections: expected at most %d open, evicted or refused %d since the "
                    "last warning (%d evicted, %d refused in all)",
                    self.limits.max_connections,
                    n,
                    edge_rejections["evicted"],
                    edge_rejections["refused"],
                )
            if self._refused:
                return
        super().connection_made(transport)
        self.waiting[self] = time.monotonic()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.waiting.pop(self, None)
        self._cancel(self._head_timer)
        self._cancel(self._write_timer)
        self._cancel(self._linger)
        self._head_timer = self._write_timer = self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's ``data_received`` with the head counted and capped (see the module)."""
        if self._refused or self._cut:
            return
        if self._head_open:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is None:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
        if (
            self._refusal is None
            and self._head_open
            and self._head_bytes > self.limits.max_headers_bytes
        ):
            self._refusal = (
                431,
                "headers_too_large",
                f"request head: expected at most {self.limits.max_headers_bytes} bytes, "
                f"got {self._head_bytes} without its end",
            )
        if self._refusal is not None:
            self._refuse_head(*self._refusal)

    def _refuse_head(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` in the service's JSON error shape, close, ignore the rest."""
        self._cut = True
        self.waiting.pop(self, None)
        edge_rejections[code] += 1
        logger.info("connection from %s: %d %s", escape(self.client), status, message)
        rid = uuid.uuid4().hex
        body = json.dumps({"error": {"code": code, "message": message}, "request_id": rid}).encode()
        reason = "URI Too Long" if status == 414 else "Request Header Fields Too Large"
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        # lingering close (as nginx): half-close, drop what the client still sends for a
        # moment, so that it reads the answer instead of a reset
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, self.transport.abort)
        else:
            self.transport.close()

    # --- request head -----------------------------------------------------------------------
    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            edge_rejections["header_timeout"] += 1
            logger.debug("connection from %s: no request head in time; closed", escape(self.client))
            self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._chunks = 0
        self._body_bytes = 0
        self._head_open = True
        self._head_bytes = 0
        self._header_count = 0
        self._header_total = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._stop_head(
                414,
                "uri_too_long",
                f"request target: expected at most {self.limits.max_url_bytes} bytes, "
                f"got more than {len(self.url) - len(url)}",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            self._stop_head(
                431,
                "headers_too_large",
                f"headers: expected at most {self.limits.max_header_count}, got more",
            )
        if len(name) + len(value) > self.limits.max_header_bytes:
            self._stop_head(
                431,
                "headers_too_large",
                f"header {escape(name, 60)}: expected at most {self.limits.max_header_bytes} "
                f"bytes, got {len(name) + len(value)}",
            )
        self._header_total += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_total + len(self.url) > self.limits.max_headers_bytes:
            self._stop_head(
                431,
                "headers_too_large",
                f"request head: expected at most {self.limits.max_headers_bytes} bytes, got more",
            )
        super().on_header(name, value)

    def _stop_head(self, status: int, code: str, message: str) -> None:
        self._refusal = (status, code, message)
        raise _HeadTooLarge(message)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self.waiting.pop(self, None)
        self._cancel(self._head_timer)
        self._head_timer = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # kept alive, idle until the next request
            self.waiting[self] = time.monotonic()

    # --- request body -----------------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        if self._cut:
            return
        self._chunks += 1
        self._body_bytes += len(body)
        if (
            self._chunks > CHUNK_GRACE
            and self._body_bytes < self._chunks * self.limits.min_body_chunk_bytes
        ):
            self._cut = True
            edge_rejections["chunk_flood"] += 1
            logger.info(
                "connection from %s: body in %d chunks of %.1f bytes on average (expected at "
                "least %d); closed",
                escape(self.client),
                self._chunks,
                self._body_bytes / self._chunks,
                self.limits.min_body_chunk_bytes,
            )
            self.transport.abort()
            return
        super().on_body(body)

    # --- response ---------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        self._cancel(self._write_timer)
        self._write_timer = self.loop.call_later(self.limits.write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel(self._write_timer)
        self._write_timer = None
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            edge_rejections["write_timeout"] += 1
            logger.info(
                "connection from %s: response unread for %g s (%d bytes buffered); aborted",
                escape(self.client),
                self.limits.write_timeout_s,
                self.transport.get_write_buffer_size(),
            )
            self.transport.abort()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A :class:`GuardedHttpToolsProtocol` subclass bound to ``limits`` (for
    ``uvicorn.Config(http=...)``)."""
    return type(
        "GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits, "waiting": {}}
    )


class _AcceptErrorFilter(logging.Filter):
    """Lets one ``accept`` error record per 10 s through (asyncio/uvloop log one per retry)."""

    def __init__(self) -> None:
        super().__init__()
        self._log = _RateLimitedLog()

    def filter(self, record: logging.LogRecord) -> bool:
        text = f"{record.msg}"
        exc = record.exc_info[1] if record.exc_info else None
        fd_error = isinstance(exc, OSError) and exc.errno in _FD_ERRNOS
        if "accept" not in text.lower() and not fd_error:
            return True
        n = self._log.hit()
        if n is None:
            return False
        record.msg = f"{record.msg} ({n} such error(s) since the last one logged)"
        return True


def prepare_process(max_connections: int) -> int:
    """Raise the soft open-file limit to the hard one, install the accept-error log filter;
    return the effective connection cap (``max_connections``, or fewer when the descriptor
    limit is lower, minus :data:`FD_RESERVE`)."""
    cap = max_connections
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        if soft != resource.RLIM_INFINITY:
            cap = max(1, min(cap, int(soft) - FD_RESERVE))
    except (ImportError, ValueError, OSError):  # no resource module / not allowed
        pass
    logging.getLogger("asyncio").addFilter(_AcceptErrorFilter())
    throttle("uvicorn.error")  # "Invalid HTTP request received." once per request otherwise
    throttle(logger)
    if cap < max_connections:
        logger.warning(
            "max_connections: expected %d, got %d (open-file limit minus %d reserved)",
            max_connections,
            cap,
            FD_RESERVE,
        )
    return cap
