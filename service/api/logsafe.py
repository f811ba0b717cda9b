"""Log lines a client cannot forge or flood.

* :func:`escape` is the one function through which every value taken from a request (path,
  header, key id, client address) passes before it reaches a log line: control characters
  (CR, LF, ESC of ANSI sequences, DEL, C1, Unicode line separators) become ``\\xNN`` /
  ``\\uNNNN`` and long values are cut, so one request writes exactly one line and cannot
  colour or rewrite a terminal.
* :class:`RepeatFilter` lets at most ``burst`` records of one message template through per
  ``every`` seconds and appends the number suppressed to the next record that passes (the
  401/429 lines, uvicorn's "Invalid HTTP request received." warnings, the connection-limit
  warnings).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

#: C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Longest request-derived value written to a log line (characters, before escaping).
MAX_LOGGED_CHARS = 200


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` as one safe line of log text: ``bytes`` are read as latin-1, control
    characters become ``\\xNN`` (``\\u2028`` for the line separators), and text past
    ``limit`` characters is cut with ``...`` appended."""
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNSAFE.sub(_hex, text)


class RepeatFilter(logging.Filter):
    """At most ``burst`` records per message template (logger, level, unformatted message) per
    ``every`` seconds; the first record let through after some were dropped says how many
    (``[N similar lines suppressed]``).  Memory is bounded by the number of templates.
    ``only``: the templates to throttle (None: all)."""

    def __init__(
        self,
        every: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        only: frozenset[str] | None = None,
    ) -> None:
        super().__init__()
        self.only = only
        self.every = every
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        #: template → (window start, records let through in it, records suppressed)
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self.only is not None and record.msg not in self.only:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            start, passed, dropped = self._seen.get(key, (now, 0, 0))
            if now - start >= self.every:
                start, passed = now, 0
            if passed >= self.burst:
                self._seen[key] = (start, passed, dropped + 1)
                return False
            self._seen[key] = (start, passed + 1, 0)
            if len(self._seen) > 1000:  # templates are bounded by the code; keep it so
                self._seen = {key: self._seen[key]}
        if dropped:
            record.msg = f"{record.getMessage()} [{dropped} similar lines suppressed]"
            record.args = None
        return True


def throttle(logger: logging.Logger | str, filt: RepeatFilter | None = None) -> RepeatFilter:
    """Attach a :class:`RepeatFilter` (a new one unless given) to ``logger`` once; return it."""
    lg = logging.getLogger(logger) if isinstance(logger, str) else logger
    for f in lg.filters:
        if isinstance(f, RepeatFilter):
            return f
    f = filt if filt is not None else RepeatFilter()
    lg.addFilter(f)
    return f
