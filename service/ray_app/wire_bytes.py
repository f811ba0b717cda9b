"""Debug instrumentation: the serialised bytes crossing each process boundary of the Ray app.

Only applied with ``measure_bytes`` (``build_app(..., measure_bytes=True)``, ``bench/scale.py``,
the cluster tests); it costs one pickle of every message.  Hops, read with an ``Ingress``
replica's ``stats()["bytes"]``:

* ``proxy`` (:class:`BoundaryBytes`, ASGI middleware): ``received`` = pickled scope + every
  received ASGI message, ``sent`` = every pickled response message; ``image`` and ``answer`` =
  the body bytes alone (the encoded image, the JSON answer);
* ``pose`` (:func:`count_pose_calls`, split topology): ``sent`` = each pickled ``PoseJob``,
  ``received`` = each pickled ``PoseAnswer``, ``crops`` shipped.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Job = TypeVar("Job")
Answer = TypeVar("Answer")


def serialized_size(obj: Any) -> int:
    """Bytes of ``obj`` pickled as Ray ships it (protocol 5; numpy buffers counted in full)."""
    return len(pickle.dumps(obj, protocol=5))


class ByteCounter:
    """Per-hop totals of serialised bytes crossing a process boundary (thread-safe).

    ``add(hop, **counts)`` adds to the named counters of ``hop`` (``calls``, ``sent``,
    ``received`` and whatever else the caller counts); :meth:`snapshot` copies them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hops: dict[str, dict[str, int]] = {}

    def add(self, hop: str, **counts: int) -> None:
        with self._lock:
            totals = self._hops.setdefault(hop, {})
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + int(v)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {hop: dict(v) for hop, v in self._hops.items()}


#: ASGI scope keys Serve's proxy forwards to a replica (the rest is rebuilt there).
_WIRE_SCOPE_KEYS = (
    "type",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
)


class BoundaryBytes:
    """ASGI middleware counting what the proxy → replica hop carries for ``POST /pose``
    (hop ``proxy``, see the module docstring)."""

    def __init__(self, app: ASGIApp, counter: ByteCounter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or scope.get("path", "").rstrip("/") != "/pose"
        ):
            await self.app(scope, receive, send)
            return
        wire = {k: scope[k] for k in _WIRE_SCOPE_KEYS if k in scope}
        n = {"received": serialized_size(wire), "sent": 0, "image": 0, "answer": 0}

        async def counted_receive() -> Message:
            msg = await receive()
            n["received"] += serialized_size(msg)
            if msg.get("type") == "http.request":
                n["image"] += len(msg.get("body", b""))
            return msg

        async def counted_send(msg: Message) -> None:
            n["sent"] += serialized_size(msg)
            if msg.get("type") == "http.response.body":
                n["answer"] += len(msg.get("body", b""))
            await send(msg)

        try:
            await self.app(scope, counted_receive, counted_send)
        finally:
            self.counter.add("proxy", calls=1, **n)


def count_pose_calls(
    call: Callable[[Job], Answer], counter: ByteCounter, crops_of: Callable[[Job], int]
) -> Callable[[Job], Answer]:
    """``call`` (one pose-pool call: job → answer) counting hop ``pose``: ``calls``, ``sent``
    (pickled job), ``received`` (pickled answer) and ``crops`` (``crops_of(job)``)."""

    def counted(job: Job) -> Answer:
        answer = call(job)
        counter.add(
            "pose",
            calls=1,
            sent=serialized_size(job),
            received=serialized_size(answer),
            crops=crops_of(job),
        )
        return answer

    return counted
