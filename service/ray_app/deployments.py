"""Ray Serve deployments of the DARK pose pipeline, in two topologies.

``pipeline`` (the default) — one deployment, ``Ingress`` (:class:`PipelineIngress`): every
replica is the whole single-process service, ``create_app(settings)`` with its own detector,
crops, pose model(s) behind the in-process :class:`~darkpose.service.api.batching.MicroBatcher` and
decoding, run on the requests Serve's router sends it.  Only the encoded image (in) and the
JSON answer (out) cross a process or node boundary.

``split`` — ``Ingress`` (:class:`SplitIngress`: image decode, detector and crops on the
ingress's CPUs) in front of a ``PoseModel`` pool (:class:`PoseDeployment`, e.g. GPU nodes).
The ingress ships a compact :class:`PoseJob` — uint8 crops (M, H, W, 3), the box geometry and
the request's options; the pose replica normalises, runs the model(s) through its own
MicroBatcher (batched across requests *and* ingress replicas), decodes and post-processes, and
answers a :class:`PoseAnswer` — boxes, keypoints and scores, ~230 bytes per person.

Every deployment builds its :class:`~darkpose.service.settings.Settings` from a plain ``dict`` of
overrides (plus the replica's ``DARKPOSE_*`` environment), so the application is configured
the same way as the single-process service.  With ``measure_bytes`` the ingress counts the
serialised size of what crosses each hop (:class:`ByteCounter`, read with ``stats()``).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.types import Message, Receive, Scope, Send

from darkpose.service.core.errors import DarkPoseError, InvalidParameter, ModelError, Overloaded
from darkpose.service.core.pipeline import Person, Pipeline, PipelineOptions, PoseResult, PoseStage
from darkpose.service.core.types import F32, ModelSpec
from darkpose.service.ray_app import INGRESS_NAME, POSE_NAME
from darkpose.service.settings import Settings, default_of

logger = logging.getLogger(__name__)


def default_pose_batch() -> dict[str, Any]:
    """Default pose batching of ``PoseModel`` (crops per model call, seconds a batch may wait):
    the settings' defaults of ``max_batch`` and ``max_wait_ms``."""
    return {
        "max_batch_size": default_of("max_batch"),
        "batch_wait_timeout_s": default_of("max_wait_ms") / 1000.0,
    }


#: ``max_ongoing_requests`` of ``PoseModel``: calls in flight per replica (worker threads);
#: must stay above the batch size in calls or it caps every batch.
POSE_MAX_ONGOING = 64
#: Ports an ingress replica tries for its own metrics, from ``metrics_address``'s port on
#: (one per replica on a node: scrape ``port .. port + replicas per node - 1``).
METRICS_PORTS = 32
#: Longest a new ingress replica's first health check waits for its models to load and warm
#: (below Serve's default ``health_check_timeout_s`` of 30 s).
LOAD_WAIT_S = 20.0


class UpstreamTimeout(DarkPoseError):
    """A call to another deployment did not answer in time (HTTP 504, JSON body)."""

    status_code = 504
    code = "upstream_timeout"


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


# --- measuring what crosses ----------------------------------------------------------------


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
    """ASGI middleware counting what the proxy → replica hop carries for ``POST /pose``.

    Hop ``proxy``: ``received`` = pickled scope + every received ASGI message (the encoded
    image and its headers), ``sent`` = every pickled response message; ``image`` and
    ``answer`` = the body bytes alone (the encoded image, the JSON answer).
    """

    def __init__(self, app: Any, counter: ByteCounter) -> None:
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


# --- the ingress (both topologies) -----------------------------------------------------------


class _IngressBase:
    """What both ingress kinds share: the FastAPI app of :func:`darkpose.service.api.create_app`,
    per-replica metrics, byte counting, a health check that waits for the warm-up, stats."""

    _settings: Settings
    _app: FastAPI | None
    _bytes: ByteCounter | None
    _metrics_bind: tuple[str, int] | None
    _metrics_server: Any
    metrics_port: int | None = None

    def _setup(
        self, settings: Mapping[str, Any] | None, metrics_address: str | None, measure: bool
    ) -> None:
        self._settings = make_settings(settings)
        self._metrics_bind = parse_address(metrics_address) if metrics_address else None
        self._metrics_server = None
        self._bytes = ByteCounter() if measure else None
        self._app = None

    def _finish_app(self, app: FastAPI) -> FastAPI:
        if self._bytes is not None:
            app.add_middleware(BoundaryBytes, counter=self._bytes)
        if self._metrics_bind is not None:
            from prometheus_client import start_http_server

            host, first = self._metrics_bind
            registry = app.state.service.metrics.registry
            # Several replicas on one node: each takes the next free port of the range.
            for port in range(first, min(first + METRICS_PORTS, 65536)):
                try:
                    self._metrics_server, _ = start_http_server(port, addr=host, registry=registry)
                except OSError:
                    continue
                self.metrics_port = port
                logger.info("Ingress metrics on http://%s:%d/metrics", host, port)
                break
            else:
                logger.warning(
                    "Ingress metrics: expected a free port in %s:%d..%d, got none",
                    host,
                    first,
                    first + METRICS_PORTS - 1,
                )
        self._app = app
        return app

    async def check_health(self) -> None:
        """Serve's health check.  The first one (before the replica takes traffic) waits for
        the models to load and warm, so a new replica never answers 503 ``not_ready``; a failed
        load fails the check and Serve replaces the replica."""
        state = self._app.state.service if self._app is not None else None
        if state is None:
            return
        if not state.ready.is_set() and state.load_error is None:
            await asyncio.to_thread(state.wait_ready, LOAD_WAIT_S)
        if state.load_error is not None:
            raise RuntimeError(f"models: expected loaded, got a failed load ({state.load_error})")

    def stats(self) -> dict[str, Any]:
        """Where this replica runs, its ``POST /pose`` count, in-process batching counters
        (``pose_pieces`` queued, ``pose_batches`` model calls: fewer calls than pieces means
        pieces of different requests shared a call) and the bytes per hop (``measure_bytes``)."""
        out: dict[str, Any] = {
            **_node_and_replica(),
            "bytes": {},
            "metrics_port": self.metrics_port,
        }
        if self._bytes is not None:
            out["bytes"] = self._bytes.snapshot()
        state = self._app.state.service if self._app is not None else None
        if state is not None:
            reg = state.metrics.registry

            def sample(name: str, labels: dict[str, str] | None = None) -> int:
                return int(reg.get_sample_value(name, labels or {}) or 0)

            ok = {"route": "/pose", "status": "200"}
            out["requests_ok"] = sample("darkpose_requests_total", ok)
            out["pose_pieces"] = sample("darkpose_queue_wait_seconds_count")
            out["pose_batches"] = sample("darkpose_batch_size_count")
            out["pose_crops"] = sample("darkpose_batch_size_sum")
        return out

    def metrics_text(self) -> str:
        """This replica's own Prometheus registry, as text."""
        if self._app is None:
            return ""
        body, _ = self._app.state.service.metrics.render()
        return body.decode()

    def __del__(self) -> None:
        server = getattr(self, "_metrics_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()


@serve.deployment(name=INGRESS_NAME, max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class PipelineIngress(_IngressBase):
    """The whole single-process service per replica (topology ``pipeline``).

    ``create_app(settings)`` builds its detector and pose model(s), wraps the pose models in
    the in-process MicroBatcher (``settings.batching``; batches across the requests of this
    replica) and warms them.  ``metrics_address`` (``"host:port"``, optional): also serve this
    replica's registry there; several replicas on a node take the next free ports.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        metrics_address: str | None = None,
        measure_bytes: bool = False,
    ) -> None:
        self._setup(settings, metrics_address, measure_bytes)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from darkpose.service.api import create_app

        return self._finish_app(create_app(self._settings))


# --- split topology: compact messages --------------------------------------------------------


@dataclass(frozen=True)
class PoseJob:
    """What the split ingress sends the pose pool for one image.

    crops: (M, H, W, 3) uint8 BGR, cut with :func:`~darkpose.service.core.transforms.cut_crops`
    (normalised on the pose replica); boxes (M, 4) xyxy and box_scores (M,) float32;
    centers/scales (M, 2) crop geometry; image_size (W, H); options: the request's options.
    """

    crops: npt.NDArray[np.uint8]
    boxes: F32
    box_scores: F32
    centers: npt.NDArray[Any]
    scales: npt.NDArray[Any]
    image_size: tuple[int, int]
    options: PipelineOptions


@dataclass(frozen=True)
class PoseAnswer:
    """What the pose pool answers: the kept persons after decoding, rescoring and OKS-NMS.

    boxes (P, 4) float32 xyxy, box_scores (P,) float64, keypoints (P, K, 3) float32 (x, y image
    px, score), scores (P,) float64 instance scores; timings: seconds of ``pose``,
    ``decode`` and ``postprocess`` on the pose replica.
    """

    boxes: F32
    box_scores: npt.NDArray[np.float64]
    keypoints: F32
    scores: npt.NDArray[np.float64]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: PoseResult, num_keypoints: int) -> PoseAnswer:
        p = result.persons
        k = num_keypoints
        return cls(
            boxes=np.array([x.bbox for x in p], np.float32).reshape(-1, 4),
            box_scores=np.array([x.box_score for x in p], np.float64),
            keypoints=np.array([x.keypoints for x in p], np.float32).reshape(-1, k, 3),
            scores=np.array([x.score for x in p], np.float64),
            timings={s: result.timings.get(s, 0.0) for s in ("pose", "decode", "postprocess")},
        )

    def persons(self) -> list[Person]:
        return [
            Person(
                bbox=_writeable(self.boxes[i]),
                box_score=float(self.box_scores[i]),
                keypoints=_writeable(self.keypoints[i]),
                score=float(self.scores[i]),
            )
            for i in range(self.boxes.shape[0])
        ]


@serve.deployment(
    name=POSE_NAME,
    max_ongoing_requests=POSE_MAX_ONGOING,
    user_config=default_pose_batch(),
    ray_actor_options={"num_cpus": 1},
)
class PoseDeployment:
    """The pose pool of the split topology: every pose model of ``settings.pose_models`` (an
    ensemble is averaged here), each behind a MicroBatcher shared by all calls of the replica.

    ``run(job: PoseJob) -> PoseAnswer`` — normalise, infer (+ flip), decode, rescore, OKS-NMS.
    ``infer(batch, model_index=0)`` — (N, 3, H, W) float32 → raw outputs (warm-up, tests).
    ``user_config``: ``{"max_batch_size": int > 0, "batch_wait_timeout_s": float ≥ 0}``.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        from darkpose.service.api.batching import MicroBatcher
        from darkpose.service.runtime.factory import build_pose_models

        s = make_settings(settings)
        models = build_pose_models(s)
        sizes = {m.spec.input_size for m in models}
        if len(sizes) != 1:
            raise ModelError(
                f"pose_models: expected one input size for the split topology, got {sorted(sizes)}"
            )
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {
            "jobs": 0,
            "crops": 0,
            "pieces": 0,
            "batches": 0,
            "max_crops_per_batch": 0,
        }
        size, wait = parse_batch_config({})
        self._batchers = [
            MicroBatcher(
                m,
                max_batch=size,
                max_wait_ms=1000.0 * wait,
                queue_size=s.queue_size,
                retry_after=s.retry_after_s,
                on_batch=self._on_batch,
                on_wait=self._on_wait,
                name=f"pose-{i}",
                workers=s.batch_workers,
            )
            for i, m in enumerate(models)
        ]
        self._models = models
        self._pipeline = Pipeline(
            None,
            list(self._batchers),
            PipelineOptions.from_settings(s),
            weights=s.pose_model_weights,
        )
        self._pool = ThreadPoolExecutor(POSE_MAX_ONGOING, thread_name_prefix="pose-call")
        logger.info("PoseModel replica ready: %s", [m.spec.name for m in models])

    def _on_batch(self, crops: int) -> None:
        with self._lock:
            self._stats["batches"] += 1
            self._stats["max_crops_per_batch"] = max(self._stats["max_crops_per_batch"], crops)

    def _on_wait(self, _seconds: float) -> None:
        with self._lock:
            self._stats["pieces"] += 1

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """Apply ``user_config`` (batch size in crops and batch wait) without a restart."""
        size, wait = parse_batch_config(config)
        for b in self._batchers:
            b.max_batch = size
            b.max_wait_s = wait

    def describe(self) -> dict[str, Any]:
        """``spec`` of the first model, model ``paths`` and onnxruntime ``providers``."""
        providers: list[str] = []
        for m in self._models:
            for p in getattr(m, "providers", []) or []:
                if p not in providers:
                    providers.append(p)
        return {
            "spec": self._models[0].spec,
            "path": ",".join(str(getattr(m, "path", m.spec.name)) for m in self._models),
            "providers": providers,
        }

    def _run(self, job: PoseJob) -> PoseAnswer:
        from darkpose.service.core.flip import flip_batch
        from darkpose.service.core.transforms import normalize_crops

        t0 = time.perf_counter()
        opts = job.options
        n = int(job.crops.shape[0])
        outs = []
        for m in self._batchers:
            x = normalize_crops(job.crops, m.spec)
            if opts.flip:
                x = np.concatenate([x, flip_batch(x)])
            outs.append(m.infer(x))
        # the (weighted) ensemble exactly as Pipeline.run_models computes it
        outputs, flipped = self._pipeline.combine_outputs(outs, n, opts.flip)
        timings = {"pose": time.perf_counter() - t0}
        stage = PoseStage(
            job.boxes,
            job.box_scores,
            job.centers,
            job.scales,
            outputs,
            flipped,
            job.image_size,
            timings,
        )
        result = self._pipeline.finish(stage, opts)
        with self._lock:
            self._stats["jobs"] += 1
            self._stats["crops"] += n
        return PoseAnswer.from_result(result, self._pipeline.spec.num_keypoints)

    async def run(self, job: PoseJob) -> PoseAnswer:
        """One image's crops → its persons (batched with the other calls of this replica)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, job)

    async def infer(self, batch: F32, model_index: int = 0) -> F32:
        """(N, 3, H, W) float32 → raw outputs (N, K, h, w) of model ``model_index``."""
        if not 0 <= model_index < len(self._batchers):
            raise InvalidParameter(
                f"model_index: expected 0..{len(self._batchers) - 1}, got {model_index}"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._batchers[model_index].infer, batch)

    def stats(self) -> dict[str, Any]:
        """Batching counters (``pieces`` queued vs ``batches`` = model calls) and placement."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
        out["max_batch_size"] = self._batchers[0].max_batch
        return {**out, **_node_and_replica()}

    def __del__(self) -> None:
        for b in getattr(self, "_batchers", []):
            b.close(timeout=1.0)


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


class RemotePose:
    """The ingress's side of the ``PoseModel`` pool (sync: call it from a worker thread).

    Looks like a :class:`~darkpose.service.core.types.PoseModel` to the service (``spec``, ``path``,
    ``providers``, ``infer`` for the warm-up); requests use :meth:`run`.
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        info: Mapping[str, Any],
        timeout_s: float = 30.0,
        counter: ByteCounter | None = None,
    ) -> None:
        self._handle = handle
        self.spec: ModelSpec = info["spec"]
        self.path: str = str(info.get("path", self.spec.name))
        self.providers: list[str] = list(info.get("providers", []))
        self._timeout_s = timeout_s
        self._counter = counter

    def infer(self, batch: F32) -> F32:
        """(N, 3, H, W) float32 → raw outputs of the first model (float32 over the wire)."""
        out: F32 = await_result(self._handle.infer.remote(batch), self._timeout_s, POSE_NAME)
        return _writeable(out)

    def run(self, job: PoseJob) -> PoseAnswer:
        answer: PoseAnswer = await_result(self._handle.run.remote(job), self._timeout_s, POSE_NAME)
        if self._counter is not None:
            self._counter.add(
                "pose",
                calls=1,
                sent=serialized_size(job),
                received=serialized_size(answer),
                crops=int(job.crops.shape[0]),
            )
        return answer


class SplitPipeline(Pipeline):
    """The split ingress's :class:`~darkpose.service.core.pipeline.Pipeline`: detect and cut uint8
    crops
    here, everything after on the ``PoseModel`` pool.

    ``pipeline(image (H, W, 3) BGR uint8, options=None) -> PoseResult``; answers equal the
    single-process pipeline's (same detector, same crops, same decoding code on the replica).
    ``pose_models`` is ``[RemotePose]`` (spec, warm-up, ``/v1/models``).
    """

    def __init__(self, detector: Any, pose: RemotePose, options: PipelineOptions) -> None:
        super().__init__(detector, [pose], options)
        self.pose = pose

    def __call__(
        self,
        image: npt.NDArray[Any],
        options: PipelineOptions | None = None,
        boxes: npt.ArrayLike | None = None,
        box_scores: npt.ArrayLike | None = None,
        image_id: int | None = None,
    ) -> PoseResult:
        from darkpose.service.core.pipeline import STAGES, as_bgr_uint8
        from darkpose.service.core.transforms import boxes_to_center_scale, cut_crops

        if boxes is not None or box_scores is not None:
            raise InvalidParameter(
                "boxes: expected none (the split topology detects on the ingress), got boxes"
            )
        opts = options or self.options
        t0 = time.perf_counter()
        img = as_bgr_uint8(image)
        size = (int(img.shape[1]), int(img.shape[0]))
        timings = dict.fromkeys(STAGES, 0.0)
        b, s = self.person_boxes(img, opts)
        t1 = time.perf_counter()
        timings["detect"] = t1 - t0
        if b.shape[0] == 0:
            timings["total"] = time.perf_counter() - t0
            return PoseResult([], size, timings, image_id)
        centers, scales = boxes_to_center_scale(b, self.spec.aspect_ratio, opts.box_padding)
        crops = cut_crops(img, centers, scales, self.spec.input_size).astype(np.uint8, copy=False)
        timings["crop"] = time.perf_counter() - t1
        answer = self.pose.run(PoseJob(crops, b, s, centers, scales, size, opts))
        timings.update(answer.timings)
        timings["total"] = time.perf_counter() - t0
        return PoseResult(answer.persons(), size, timings, image_id)


@serve.deployment(name=INGRESS_NAME, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class SplitIngress(_IngressBase):
    """The ingress of the split topology: HTTP, image decode, detector and crops here (CPU);
    pose, decoding and post-processing on the ``PoseModel`` pool."""

    async def __init__(  # type: ignore[misc]
        self,
        pose: DeploymentHandle,
        settings: Mapping[str, Any] | None = None,
        metrics_address: str | None = None,
        measure_bytes: bool = False,
    ) -> None:
        from darkpose.service.runtime.factory import build_detector

        self._setup(settings, metrics_address, measure_bytes)
        started = time.perf_counter()
        info = await pose.describe.remote()
        detector = await asyncio.to_thread(build_detector, self._settings)
        logger.info("split Ingress: pose pool described in %.2fs", time.perf_counter() - started)
        remote = RemotePose(pose, info, self._settings.request_timeout_s, self._bytes)
        self._pipeline = SplitPipeline(
            detector, remote, PipelineOptions.from_settings(self._settings)
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        from darkpose.service.api import create_app

        return self._finish_app(create_app(self._settings, pipeline=self._pipeline))
