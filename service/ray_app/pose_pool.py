"""The split topology's pose stage: a ``PoseModel`` pool (:class:`PoseDeployment`, e.g. GPU
nodes) and the ingress's side of it (:class:`RemotePose`).

The ingress's :class:`~darkpose.service.core.pipeline.Pipeline` detects and computes the crop
geometry as everywhere; its pose stage is a :class:`RemotePose`, which cuts uint8 crops
(:func:`~darkpose.service.core.transforms.cut_crops`) and ships a compact :class:`PoseJob` to
the pool.  A pool replica runs the same
:class:`~darkpose.service.core.pose_stage.ModelPose` as the single-process service (normalise,
pose model(s) through its own MicroBatcher — batched across requests *and* ingress replicas —,
flip fusion, decoding) and answers a :class:`PoseAnswer`: keypoints and scores, ~230 bytes per
crop.  Rescoring and OKS-NMS run on the ingress, in the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from ray import serve
from ray.serve.handle import DeploymentHandle

from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.pipeline import PipelineOptions
from darkpose.service.core.pose_stage import ModelPose
from darkpose.service.core.transforms import cut_crops
from darkpose.service.core.types import F32, ModelSpec, PoseModel
from darkpose.service.ray_app import POSE_NAME
from darkpose.service.ray_app.common import (
    await_result,
    default_pose_batch,
    make_settings,
    node_and_replica,
    parse_batch_config,
    writeable,
)
from darkpose.service.runtime.batching import MicroBatcher

logger = logging.getLogger(__name__)

#: ``max_ongoing_requests`` of ``PoseModel``: calls in flight per replica (worker threads);
#: must stay above the batch size in calls or it caps every batch.
POSE_MAX_ONGOING = 64


@dataclass(frozen=True)
class PoseJob:
    """What the split ingress sends the pose pool for one image.

    crops: (M, H, W, 3) uint8 BGR, cut with :func:`~darkpose.service.core.transforms.cut_crops`
    (normalised on the pose replica); centers/scales: (M, 2) float32 crop geometry; options:
    the request's options, resolved (decode method and blur kernel set).
    """

    crops: npt.NDArray[np.uint8]
    centers: F32
    scales: F32
    options: PipelineOptions


@dataclass(frozen=True)
class PoseAnswer:
    """What the pose pool answers: keypoints (M, K, 3) float32 (x, y image px, unclipped score),
    one per crop of the job, and the seconds of ``pose`` and ``decode`` on the replica."""

    keypoints: F32
    timings: dict[str, float] = field(default_factory=dict)


@serve.deployment(
    name=POSE_NAME,
    max_ongoing_requests=POSE_MAX_ONGOING,
    user_config=default_pose_batch(),
    ray_actor_options={"num_cpus": 1},
)
class PoseDeployment:
    """The pose pool of the split topology: every pose model of ``settings.pose_models`` (an
    ensemble is averaged here), each behind a MicroBatcher shared by all calls of the replica.

    ``run(job: PoseJob) -> PoseAnswer`` — the pose stage from uint8 crops.
    ``infer(batch, model_index=0)`` — (N, 3, H, W) float32 → raw outputs (warm-up, tests).
    ``user_config``: ``{"max_batch_size": int > 0, "batch_wait_timeout_s": float ≥ 0}``.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
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
        self._pose = ModelPose(list(self._batchers), s.pose_model_weights)
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

    def run_job(self, job: PoseJob) -> PoseAnswer:
        """One image's crops → their keypoints (sync; batched with the replica's other calls)."""
        kpts, timings = self._pose.keypoints_from_crops(
            job.crops, job.centers, job.scales, job.options
        )
        with self._lock:
            self._stats["jobs"] += 1
            self._stats["crops"] += int(job.crops.shape[0])
        return PoseAnswer(kpts, timings)

    def infer_batch(self, batch: F32, model_index: int = 0) -> F32:
        """(N, 3, H, W) float32 → raw outputs (N, K, h, w) of model ``model_index`` (sync)."""
        if not 0 <= model_index < len(self._batchers):
            raise InvalidParameter(
                f"model_index: expected 0..{len(self._batchers) - 1}, got {model_index}"
            )
        return self._batchers[model_index].infer(batch)

    async def run(self, job: PoseJob) -> PoseAnswer:
        """:meth:`run_job` in the replica's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run_job, job)

    async def infer(self, batch: F32, model_index: int = 0) -> F32:
        """:meth:`infer_batch` in the replica's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.infer_batch, batch, model_index)

    def stats(self) -> dict[str, Any]:
        """Batching counters (``pieces`` queued vs ``batches`` = model calls) and placement."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
        out["max_batch_size"] = self._batchers[0].max_batch
        return {**out, **node_and_replica()}

    def __del__(self) -> None:
        for b in getattr(self, "_batchers", []):
            b.close(timeout=1.0)


class RemotePose:
    """The split ingress's pose stage (a :class:`~darkpose.service.core.pose_stage.KeypointStage`
    for the :class:`~darkpose.service.core.pipeline.Pipeline`): cut uint8 crops here, everything
    up to the keypoints on the pool.  Sync: the pipeline calls it from a worker thread.

    ``run``: one pool call, :class:`PoseJob` → :class:`PoseAnswer`; ``infer``: (N, 3, H, W)
    float32 → the first model's raw outputs (the service's warm-up); ``info``: the pool's
    ``describe()``.  It also stands for the pool's models in ``/v1/models`` (``spec``,
    ``path``, ``providers``).  :meth:`over` wires both calls to a deployment handle.
    """

    def __init__(
        self,
        run: Callable[[PoseJob], PoseAnswer],
        infer: Callable[[F32], F32],
        info: Mapping[str, Any],
    ) -> None:
        self.run = run
        self._infer = infer
        self.spec: ModelSpec = info["spec"]
        self.path: str = str(info.get("path", self.spec.name))
        self.providers: list[str] = list(info.get("providers", []))

    @classmethod
    def over(
        cls, handle: DeploymentHandle, info: Mapping[str, Any], timeout_s: float
    ) -> RemotePose:
        """Calls through ``handle`` (the ``PoseModel`` deployment), each answered within
        ``timeout_s`` or :class:`~darkpose.service.ray_app.common.UpstreamTimeout` (504)."""

        def run(job: PoseJob) -> PoseAnswer:
            answer: PoseAnswer = await_result(handle.run.remote(job), timeout_s, POSE_NAME)
            return answer

        def infer(batch: F32) -> F32:
            out: F32 = await_result(handle.infer.remote(batch), timeout_s, POSE_NAME)
            return out

        return cls(run, infer, info)

    @property
    def pose_models(self) -> list[PoseModel]:
        return [self]

    def infer(self, batch: F32) -> F32:
        """(N, 3, H, W) float32 → raw outputs of the pool's first model."""
        return writeable(self._infer(batch))

    def keypoints(
        self,
        image: npt.NDArray[np.uint8],
        centers: F32,
        scales: F32,
        options: PipelineOptions,
    ) -> tuple[F32, dict[str, float]]:
        """The pose stage: uint8 crops of ``image`` (H, W, 3) → keypoints (M, K, 3) float32."""
        t0 = time.perf_counter()
        crops = cut_crops(image, centers, scales, self.spec.input_size).astype(np.uint8, copy=False)
        crop_s = time.perf_counter() - t0
        answer = self.run(PoseJob(crops, centers, scales, options))
        return writeable(answer.keypoints), {"crop": crop_s, **answer.timings}
