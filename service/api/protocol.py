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

:func:`prepare_process` raises the soft open-file limit to the hard one, derives the effective
connection cap from it (so ``accept()`` never runs out of descriptors) and installs a filter
that lets at most one ``accept`` error per 10 s through to the log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

#: File descriptors kept free for models, logs, sockets to clients of the service itself.
FD_RESERVE = 64
#: Chunks an upload may arrive in before the mean chunk size is checked.
CHUNK_GRACE = 1024
_LOG_EVERY_S = 10.0
_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1024
    header_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    min_body_chunk_bytes: int = 256


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
#: Totals since the process started (bench/hostile.py and tests read them from the log).
counters = {
    "refused": 0,
    "evicted": 0,
    "header_timeouts": 0,
    "write_timeouts": 0,
    "chunk_floods": 0,
}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; ``limits`` is set by :func:`guarded_protocol`."""

    limits = ConnectionLimits()
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

    # --- connections ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.server_state.connections) >= self.limits.max_connections:
            if self.waiting:  # evict the connection idle the longest
                oldest = next(iter(self.waiting))
                self.waiting.pop(oldest, None)
                counters["evicted"] += 1
                oldest.transport.abort()
            else:
                self._refused = True
                counters["refused"] += 1
                transport.abort()
            n = _refused_log.hit()
            if n is not None:
                logger.warning(
                    "connections: expected at most %d open, evicted or refused %d since the "
                    "last warning (%d evicted, %d refused in all)",
                    self.limits.max_connections,
                    n,
                    counters["evicted"],
                    counters["refused"],
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
        self._head_timer = self._write_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._cut:
            return
        super().data_received(data)

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
            counters["header_timeouts"] += 1
            logger.debug("connection from %s: no request head in time; closed", self.client)
            self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._chunks = 0
        self._body_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
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
            counters["chunk_floods"] += 1
            logger.info(
                "connection from %s: body in %d chunks of %.1f bytes on average (expected at "
                "least %d); closed",
                self.client,
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
            counters["write_timeouts"] += 1
            logger.info(
                "connection from %s: response unread for %g s (%d bytes buffered); aborted",
                self.client,
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
    if cap < max_connections:
        logger.warning(
            "max_connections: expected %d, got %d (open-file limit minus %d reserved)",
            max_connections,
            cap,
            FD_RESERVE,
        )
    return cap
