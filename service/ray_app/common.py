"""What the Ray deployments share: replica settings, ``user_config`` and address parsing, calls
to another deployment with Ray's failures mapped to the service's typed errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from darkpose.service.core.errors import DarkPoseError, InvalidParameter, Overloaded
from darkpose.service.settings import Settings, default_of


def default_pose_batch() -> dict[str, Any]:
    """Default pose batching of ``PoseModel`` (crops per model call, seconds a batch may wait):
    the settings' defaults of ``max_batch`` and ``max_wait_ms``."""
    return {
        "max_batch_size": default_of("max_batch"),
        "batch_wait_timeout_s": default_of("max_wait_ms") / 1000.0,
    }


class UpstreamTimeout(DarkPoseError):
    """A call to another deployment did not answer in time (HTTP 504, JSON body)."""

    status_code = 504
    code = "upstream_timeout"


def make_settings(overrides: Mapping[str, Any] | None) -> Settings:
    """``Settings`` of a replica: its ``DARKPOSE_*`` environment, then ``overrides``."""
    return Settings(**dict(overrides or {}))


def node_and_replica() -> dict[str, str]:
    """Where the calling replica runs: ``node_id``, ``replica`` tag, ``deployment`` name."""
    ctx = serve.get_replica_context()
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "replica": ctx.replica_tag,
        "deployment": ctx.deployment,
    }


def writeable(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a`` itself if writeable, else a copy (arrays from Ray's object store are read-only)."""
    return a if a.flags.writeable else np.array(a, copy=True)


def parse_batch_config(config: Mapping[str, Any]) -> tuple[int, float]:
    """``PoseModel``'s ``user_config`` → (max_batch_size crops > 0, batch_wait_timeout_s ≥ 0).

    Missing keys take :func:`default_pose_batch`; unknown keys and bad values raise
    :class:`InvalidParameter`.
    """
    if not isinstance(config, Mapping):
        raise InvalidParameter(f"user_config: expected a mapping, got {type(config).__name__}")
    defaults = default_pose_batch()
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise InvalidParameter(
            f"user_config: expected keys among {sorted(defaults)}, got {unknown}"
        )
    size = config.get("max_batch_size", defaults["max_batch_size"])
    wait = config.get("batch_wait_timeout_s", defaults["batch_wait_timeout_s"])
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise InvalidParameter(f"max_batch_size: expected an int > 0, got {size!r}")
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait < 10:
        raise InvalidParameter(f"batch_wait_timeout_s: expected seconds in [0, 10), got {wait!r}")
    return size, float(wait)


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` → (host, port); raises :class:`InvalidParameter` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidParameter(f"metrics_address: expected 'host:port', got {address!r}")
    return host, int(port)


def await_result(response: Any, timeout_s: float, what: str) -> Any:
    """``response.result`` with Ray's failures mapped to the service's typed errors."""
    try:
        return response.result(timeout_s=timeout_s)
    except BackPressureError as exc:
        raise Overloaded(f"{what}: expected a free replica slot, got a full queue ({exc})") from exc
    except RayActorError as exc:
        raise Overloaded(
            f"{what}: expected a live replica, got {type(exc).__name__} (replica restarting)"
        ) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"{what}: expected an answer within {timeout_s:g} s, got none"
        ) from exc
