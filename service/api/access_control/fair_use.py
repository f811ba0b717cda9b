"""Fair use per client: token buckets (requests/s with a burst) and concurrency counts.

The same :class:`TokenBuckets` also meter failed authentications per client address (a bucket
set of their own), so guessing keys is throttled with 429 like any other excess.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from darkpose.service.api.access_control.keys import AccessConfigError

#: Most clients whose token bucket is remembered (least recently seen are forgotten).
MAX_TRACKED_CLIENTS = 100_000


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


class InflightCounts:
    """Requests in flight per client, capped at ``limit`` (0: no cap)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._n: dict[str, int] = {}

    def full(self, client: str) -> bool:
        return bool(self.limit) and self._n.get(client, 0) >= self.limit

    def acquire(self, client: str) -> None:
        self._n[client] = self._n.get(client, 0) + 1

    def release(self, client: str) -> None:
        n = self._n.get(client, 0) - 1
        if n > 0:
            self._n[client] = n
        else:
            self._n.pop(client, None)

    def __getitem__(self, client: str) -> int:
        return self._n.get(client, 0)
