"""Ray Serve deployments of the DARK pose pipeline.

Three deployments, each a thin shell around code that already exists:

- ``Detector`` — :func:`service.runtime.factory.build_detector` behind ``detect(image)``.
- ``PoseModel`` — one pose model of :func:`service.runtime.factory.build_pose_models` behind
  ``infer(batch)``, batched across requests with ``@serve.batch`` (batch size counted in
  crops, tunable through ``user_config``).
- ``Ingress`` — ``@serve.ingress`` on the FastAPI app of :func:`service.api.create_app`, with a
  :class:`~service.core.pipeline.Pipeline` injected whose detector and pose models are the
  adapters :class:`RemoteDetector` / :class:`RemotePoseModel` (sync; they run in the request's
  worker thread and block on ``handle.remote(x).result()``).

Every deployment builds its own :class:`~service.settings.Settings` from a plain ``dict`` of
overrides (plus the replica's ``DARKPOSE_*`` environment), so the application is configured
the same way as the single-process service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from service.core.errors import InvalidParameter, Overloaded
from service.core.types import F32, Detections, ModelSpec
from service.ray_app import DETECTOR_NAME, INGRESS_NAME, POSE_NAME
from service.settings import Settings

logger = logging.getLogger(__name__)

#: Default pose batching (crops per model call, seconds to wait for a batch to fill).
DEFAULT_POSE_BATCH: dict[str, Any] = {"max_batch_size": 32, "batch_wait_timeout_s": 0.005}
#: Default ``max_ongoing_requests`` of ``PoseModel``: must stay above the batch size in calls,
#: or Serve caps every batch at this value (the default of 5 would silently cap batches at 5).
POSE_MAX_ONGOING = 64


def make_settings(overrides: Mapping[str, Any] | None) -> Settings:
    """``Settings`` of a replica: its ``DARKPOSE_*`` environment, then ``overrides``."""
    return Settings(**dict(overrides or {}))


def _node_and_replica() -> dict[str, str]:
    ctx = serve.get_replica_context()
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "replica": ctx.replica_tag,
        "deployment": ctx.deployment,
    }


def _writeable(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a`` itself if writeable, else a copy (arrays from Ray's object store are read-only)."""
    return a if a.flags.writeable else np.array(a, copy=True)


def parse_batch_config(config: Mapping[str, Any]) -> tuple[int, float]:
    """``PoseModel``'s ``user_config`` → (max_batch_size crops > 0, batch_wait_timeout_s ≥ 0).

    Missing keys take :data:`DEFAULT_POSE_BATCH`; unknown keys and bad values raise
    :class:`InvalidParameter`.
    """
    if not isinstance(config, Mapping):
        raise InvalidParameter(f"user_config: expected a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_POSE_BATCH))
    if unknown:
        raise InvalidParameter(
            f"user_config: expected keys among {sorted(DEFAULT_POSE_BATCH)}, got {unknown}"
        )
    size = config.get("max_batch_size", DEFAULT_POSE_BATCH["max_batch_size"])
    wait = config.get("batch_wait_timeout_s", DEFAULT_POSE_BATCH["batch_wait_timeout_s"])
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


# --- pose ------------------------------------------------------------------------------------


@serve.deployment(
    name=POSE_NAME,
    max_ongoing_requests=POSE_MAX_ONGOING,
    user_config=DEFAULT_POSE_BATCH,
    ray_actor_options={"num_cpus": 1},
)
class PoseDeployment:
    """One pose model, batched across requests.

    ``infer(batch)``: (N, 3, H, W) float32 normalised crops → heatmaps (N, K, h, w) float32
    (or (N, K, 3) keypoints for ``spec.decoded_output`` models).  Calls are merged into model
    calls of at most ``max_batch_size`` crops; a call larger than that is split first.
    ``user_config``: ``{"max_batch_size": int > 0, "batch_wait_timeout_s": float ≥ 0}``.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None, model_index: int = 0) -> None:
        from service.runtime.factory import build_pose_models

        s = make_settings(settings)
        models = build_pose_models(s)
        if not 0 <= model_index < len(models):
            raise InvalidParameter(f"model_index: expected 0..{len(models) - 1}, got {model_index}")
        self._model = models[model_index]
        self._max_batch = int(DEFAULT_POSE_BATCH["max_batch_size"])
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {
            "batches": 0,
            "calls": 0,
            "crops": 0,
            "max_calls_per_batch": 0,
            "max_crops_per_batch": 0,
            "multi_call_batches": 0,
        }
        logger.info("PoseModel replica ready: %s", self._model.spec.name)

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Apply ``user_config`` (batch size in crops and batch wait) without a restart."""
        size, wait = parse_batch_config(config)
        self._max_batch = size
        self._infer_batched.set_max_batch_size(size)  # type: ignore[attr-defined]
        self._infer_batched.set_batch_wait_timeout_s(wait)  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        """``spec``, ``path`` and onnxruntime ``providers`` of the model (for ``/v1/models``)."""
        return {
            "spec": self._model.spec,
            "path": str(getattr(self._model, "path", self._model.spec.name)),
            "providers": list(getattr(self._model, "providers", []) or []),
        }

    async def infer(self, batch: F32) -> F32:
        """(N, 3, H, W) float32 → (N, K, h, w) float32, batched with other calls."""
        n = int(batch.shape[0])
        if n == 0:
            return self._model.infer(batch)
        if n <= self._max_batch:
            return await self._infer_batched(batch)
        pieces = [batch[i : i + self._max_batch] for i in range(0, n, self._max_batch)]
        outs = await asyncio.gather(*(self._infer_batched(p) for p in pieces))
        return np.concatenate(outs, axis=0)

    @serve.batch(
        max_batch_size=int(DEFAULT_POSE_BATCH["max_batch_size"]),
        batch_wait_timeout_s=float(DEFAULT_POSE_BATCH["batch_wait_timeout_s"]),
        batch_size_fn=lambda items: sum(int(x.shape[0]) for x in items),
    )
    async def _infer_batched(self, batches: list[F32]) -> list[F32]:
        sizes = [int(b.shape[0]) for b in batches]
        joined = batches[0] if len(batches) == 1 else np.concatenate(batches, axis=0)
        out = await asyncio.to_thread(self._model.infer, joined)
        with self._lock:
            st = self._stats
            st["batches"] += 1
            st["calls"] += len(batches)
            st["crops"] += sum(sizes)
            st["max_calls_per_batch"] = max(st["max_calls_per_batch"], len(batches))
            st["max_crops_per_batch"] = max(st["max_crops_per_batch"], sum(sizes))
            st["multi_call_batches"] += int(len(batches) > 1)
        bounds = np.cumsum([0, *sizes])
        return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def stats(self) -> dict[str, Any]:
        """Batching counters of this replica and where it runs (node id, replica id)."""
        with self._lock:
            return {**self._stats, **_node_and_replica(), "max_batch_size": self._max_batch}


# --- detector --------------------------------------------------------------------------------


@serve.deployment(name=DETECTOR_NAME, max_ongoing_requests=16, ray_actor_options={"num_cpus": 1})
class DetectorDeployment:
    """The configured person detector: ``detect(image (H, W, 3) uint8 BGR) -> Detections``."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        from service.runtime.factory import build_detector

        self._detector = build_detector(make_settings(settings))
        self._calls = 0

    async def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        self._calls += 1
        return await asyncio.to_thread(self._detector.detect, image, score_threshold)

    def stats(self) -> dict[str, Any]:
        return {"calls": self._calls, **_node_and_replica()}


# --- adapters used by the ingress's pipeline ---------------------------------------------------


def _result(response: Any, timeout_s: float, what: str) -> Any:
    try:
        return response.result(timeout_s=timeout_s)
    except BackPressureError as exc:
        raise Overloaded(f"{what}: expected a free replica slot, got a full queue ({exc})") from exc


class RemoteDetector:
    """:class:`~service.core.types.Detector` forwarding to the ``Detector`` deployment.

    Sync: call it from a worker thread (the pipeline's), never from the event loop.
    """

    def __init__(self, handle: DeploymentHandle, timeout_s: float = 30.0) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        dets: Detections = _result(
            self._handle.detect.remote(image, score_threshold), self._timeout_s, DETECTOR_NAME
        )
        return Detections(_writeable(dets.boxes), _writeable(dets.scores))


class RemotePoseModel:
    """:class:`~service.core.types.PoseModel` forwarding to a ``PoseModel`` deployment.

    ``infer(batch)``: (N, 3, H, W) float32 → heatmaps (N, K, h, w) float32.  Sync: call it
    from a worker thread.  ``info`` is the deployment's ``describe()`` (spec, path, providers),
    fetched once by the ingress.
    """

    def __init__(
        self, handle: DeploymentHandle, info: Mapping[str, Any], timeout_s: float = 30.0
    ) -> None:
        self._handle = handle
        self.spec: ModelSpec = info["spec"]
        self.path: str = str(info.get("path", self.spec.name))
        self.providers: list[str] = list(info.get("providers", []))
        self._timeout_s = timeout_s

    def infer(self, batch: F32) -> F32:
        out: F32 = _result(self._handle.infer.remote(batch), self._timeout_s, POSE_NAME)
        return _writeable(out)


# --- ingress ---------------------------------------------------------------------------------


@serve.deployment(name=INGRESS_NAME, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class IngressDeployment:
    """The service's own FastAPI app (same routes, schemas, metrics) on a remote pipeline.

    The app is built per replica by :meth:`__serve_build_asgi_app__` after the constructor has
    fetched the pose models' specs from their deployments.  In-process micro-batching is off
    here: ``PoseModel`` batches across all ingress replicas instead.

    ``metrics_address`` (``"host:port"``, optional): also serve this replica's own Prometheus
    registry there (``/metrics`` through Serve's proxy reaches one replica at random; with
    several ingress replicas scrape each one on its node at this address — one replica per
    node, ``max_replicas_per_node: 1``, or the port clashes).
    """

    async def __init__(  # type: ignore[misc]
        self,
        detector: DeploymentHandle,
        pose_models: list[DeploymentHandle],
        settings: Mapping[str, Any] | None = None,
        metrics_address: str | None = None,
    ) -> None:
        from service.core.pipeline import Pipeline, PipelineOptions

        self._metrics_bind = parse_address(metrics_address) if metrics_address else None
        self._metrics_server: Any = None

        overrides = {**dict(settings or {}), "batching": False}
        self._settings = make_settings(overrides)
        timeout = self._settings.request_timeout_s
        started = time.perf_counter()
        infos = [await h.describe.remote() for h in pose_models]
        logger.info(
            "Ingress: %d pose model(s) described in %.2fs",
            len(infos),
            time.perf_counter() - started,
        )
        self._pipeline = Pipeline(
            RemoteDetector(detector, timeout),
            [RemotePoseModel(h, info, timeout) for h, info in zip(pose_models, infos, strict=True)],
            PipelineOptions.from_settings(self._settings),
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        from service.api import create_app

        app = create_app(self._settings, pipeline=self._pipeline)
        if self._metrics_bind is not None:
            from prometheus_client import start_http_server

            host, port = self._metrics_bind
            registry = app.state.service.metrics.registry
            self._metrics_server, _ = start_http_server(port, addr=host, registry=registry)
            logger.info("Ingress metrics on http://%s:%d/metrics", host, port)
        return app

    def __del__(self) -> None:
        server = getattr(self, "_metrics_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
