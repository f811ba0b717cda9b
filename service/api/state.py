"""Runtime state of one app: the pipeline (loaded in the background), limits, batchers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from darkpose.service.api.metrics import Metrics
from darkpose.service.api.schemas import (
    BatchingInfo,
    ModelsResponse,
    PoseModelEntry,
    ProfileInfo,
)
from darkpose.service.api.work import (
    DEFAULT_DETECTOR_INPUT,
    MB,
    MemoryBudget,
    RequestCost,
    estimate_request_cost,
)
from darkpose.service.core.errors import InvalidParameter, NotReady, Overloaded, PayloadTooLarge
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.types import PoseModel
from darkpose.service.runtime.batching import MicroBatcher
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)


def _pose_models_of(pipeline: Pipeline | None) -> list[PoseModel]:
    """The pose models of a :class:`~darkpose.service.core.pipeline.Pipeline` (none before
    loading)."""
    return list(pipeline.pose_models) if pipeline is not None else []


def _runtime_of(model: object) -> dict[str, str]:
    """``backend`` and ``precision`` of a pose model (an int8 file's card says int8; its float
    ops run at the runtime precision)."""
    card = getattr(model, "card", None)
    precision = str(getattr(model, "precision", "fp32"))
    if getattr(card, "precision", None) == "int8":
        precision = "int8"
    return {"backend": str(getattr(model, "backend", "onnxruntime")), "precision": precision}


def _unwrap(model: PoseModel) -> PoseModel:
    return model.model if isinstance(model, MicroBatcher) else model


class _Slots:
    """At most ``limit`` holders at once; one more is refused with ``Overloaded`` (HTTP 503 +
    ``Retry-After``).  ``what`` names the count in the error message."""

    def __init__(self, what: str, limit: int, retry_after: float) -> None:
        self.what = what
        self.limit = limit
        self.retry_after = retry_after
        self._held = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self._held >= self.limit:
                raise Overloaded(
                    f"{self.what}: expected at most {self.limit}, got {self._held + 1}",
                    retry_after=self.retry_after,
                )
            self._held += 1

    def give(self) -> None:
        with self._lock:
            self._held -= 1

    @contextmanager
    def hold(self) -> Iterator[None]:
        """:meth:`take` for the ``with`` block, :meth:`give` after it."""
        self.take()
        try:
            yield
        finally:
            self.give()

    @property
    def held(self) -> int:
        with self._lock:
            return self._held


class ServiceState:
    """What the routes need: settings, metrics, pipeline (once ready), in-flight accounting."""

    def __init__(self, settings: Settings, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.injected = pipeline is not None
        self.pipeline: Pipeline | None = pipeline
        self.default_options: PipelineOptions | None = None
        self.batchers: list[MicroBatcher] = []
        self.ready = threading.Event()
        self.load_error: str | None = None
        #: Called (in the loader thread) with the one-line error when loading fails for good;
        #: ``darkpose serve`` sets it to stop the server and exit non-zero.  When it is set the
        #: caller reports the error, otherwise it is logged here.
        self.on_load_error: Callable[[str], None] | None = None
        self.loaded_at: float | None = None
        self._work_slots = _Slots(
            "in-flight requests", settings.max_inflight_requests, settings.retry_after_s
        )
        self._upload_slots = _Slots(
            "uploads in progress", settings.max_concurrent_uploads, settings.retry_after_s
        )
        self._loader: threading.Thread | None = None
        self._response_info: dict[str, Any] | None = None
        self.memory = MemoryBudget(settings.memory_budget_mb * MB, settings.retry_after_s)
        self._executor: ThreadPoolExecutor | None = None

    # --- loading ----------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Build (or adopt) the pipeline and warm it up in a background thread.  After a
        :meth:`close` (the lifespan entered again, e.g. by a second test client) the closed
        batchers are replaced by new ones around the same models."""
        if self.batchers and self.pipeline is not None and all(b.closed for b in self.batchers):
            self.batchers = [self._make_batcher(b.model) for b in self.batchers]
            self.pipeline.pose_models = list(self.batchers)
        self._loader = threading.Thread(target=self._load, name="darkpose-loader", daemon=True)
        self._loader.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def _make_batcher(self, model: PoseModel) -> MicroBatcher:
        s = self.settings
        return MicroBatcher(
            model,
            max_batch=s.max_batch,
            max_wait_ms=s.max_wait_ms,
            queue_size=s.queue_size,
            retry_after=s.retry_after_s,
            on_batch=self.metrics.batch_size.observe,
            on_wait=self.metrics.queue_wait.observe,
            workers=s.batch_workers,
        )

    def _build(self) -> Pipeline:
        from darkpose.service.runtime.factory import build_detector, build_pose_models

        s = self.settings
        detector = build_detector(s)
        models: list[PoseModel] = list(build_pose_models(s))
        if s.batching:
            self.batchers = [self._make_batcher(m) for m in models]
            models = list(self.batchers)
        return Pipeline(detector, models, self.default_options, weights=s.pose_model_weights)

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.default_options = (
                self.pipeline.options
                if self.pipeline is not None
                else PipelineOptions.from_settings(self.settings)
            )
            if self.pipeline is None:
                self.pipeline = self._build()
            if self.settings.warmup:
                self._warmup()
            info = self.model_info()
            self.metrics.set_model_info(
                pose_model=",".join(m.name for m in info.pose_models),
                detector=info.detector,
                providers=info.providers,
                decode=self.resolved_decode(),
            )
            self.loaded_at = time.time()
            self.ready.set()
            logger.info(
                "models loaded and warmed in %.2f s (providers: %s)",
                time.perf_counter() - t0,
                info.providers,
            )
            logger.info("%s", self.settings.profile_line())
        except Exception as exc:  # every load failure is final: nothing retries it
            from darkpose.service.core.errors import DarkPoseError

            if isinstance(exc, DarkPoseError):
                message = exc.message
                logger.debug("loading the models failed", exc_info=True)
            else:  # not one of ours: a bug or an environment problem, keep the traceback
                message = f"{type(exc).__name__}: {exc}"
                logger.error("loading the models failed", exc_info=True)
            self.load_error = " ".join(message.split())  # one line
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
            else:
                logger.error("loading the models failed: %s", self.load_error)

    def _warmup(self) -> None:
        pipeline = self.pipeline
        if pipeline is None:
            return
        for m in _pose_models_of(pipeline):
            w, h = m.spec.input_size
            m.infer(np.zeros((1, 3, h, w), np.float32))
        pipeline(np.full((256, 256, 3), 114, np.uint8), options=self.default_options)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None  # a later start makes a new pool
        for b in self.batchers:
            b.close()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Worker threads of pose work (``max_inflight_requests`` of them)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.max_inflight_requests, thread_name_prefix="darkpose-work"
            )
        return self._executor

    # --- request accounting --------------------------------------------------------------
    def require_ready(self) -> Pipeline:
        """The pipeline once loaded and warmed, else ``NotReady`` (HTTP 503)."""
        if not self.ready.is_set() or self.pipeline is None:
            got = f"a failed load ({self.load_error})" if self.load_error else "still loading"
            raise NotReady(f"models: expected loaded and warmed, got {got}")
        return self.pipeline

    def options(self) -> PipelineOptions:
        """The default per-request options (set while loading; ``NotReady`` before)."""
        if self.default_options is None:
            raise NotReady("pipeline options: expected them set by loading, got none yet")
        return self.default_options

    def enter(self) -> None:
        """Admit one request's work or raise ``Overloaded`` when ``max_inflight_requests`` are
        in (the ``darkpose_inflight_requests`` gauge counts requests in the handler instead,
        uploads included)."""
        self._work_slots.take()

    def leave(self) -> None:
        self._work_slots.give()

    def upload_slot(self) -> AbstractContextManager[None]:
        """One of ``max_concurrent_uploads`` request bodies being received, else ``Overloaded``
        (separate from the in-flight slots, which are taken only once a body has arrived)."""
        return self._upload_slots.hold()

    def check_queue_room(self, pipeline: Pipeline, crops: int) -> None:
        """Refuse (``Overloaded``) before any work when a pose batcher's queue holds crops and
        cannot take ``crops`` more (the batcher would refuse them only after detection).  The
        batchers are the pipeline's :class:`MicroBatcher` pose models (built or injected)."""
        for b in _pose_models_of(pipeline):
            if isinstance(b, MicroBatcher):
                b.check_room(crops)

    @property
    def inflight(self) -> int:
        return self._work_slots.held

    # --- memory admission -------------------------------------------------------------------
    def request_cost(
        self,
        pipeline: Pipeline,
        options: PipelineOptions,
        render: bool,
        width: int = 0,
        height: int = 0,
        mode: str = "RGB",
        persons: int | None = None,
    ) -> RequestCost:
        """The estimated memory of one request on ``pipeline`` per stage
        (:func:`~darkpose.service.api.work.estimate_request_cost`): an image of ``width`` ×
        ``height`` (0 × 0: the query's part alone), ``persons`` (default
        ``options.max_persons``) × ``options.crops_per_person`` crops per pose model, the
        detector's input and candidates, the overlay with ``render``."""
        spec = pipeline.spec
        detector = pipeline.detector
        det_input = getattr(detector, "input_size", None) or DEFAULT_DETECTOR_INPUT
        candidates = getattr(detector, "pre_nms_topk", None) or self.settings.det_pre_nms_topk
        render_px = min(width * height, self.settings.max_render_side**2) if render else 0
        return estimate_request_cost(
            width,
            height,
            mode,
            persons=options.max_persons if persons is None else persons,
            crops_per_person=options.crops_per_person,
            crop_size=spec.input_size,
            heatmap_size=spec.heatmap_size,
            keypoints=spec.num_keypoints,
            models=len(pipeline.pose_models),
            render_pixels=render_px,
            detector_input=(int(det_input[0]), int(det_input[1])),
            candidates=int(candidates),
        )

    def check_parameters_fit(
        self, pipeline: Pipeline, options: PipelineOptions, render: bool
    ) -> None:
        """Refuse before any work (``InvalidParameter``, 422) a query whose own part of the
        estimate (``max_persons`` × ``crops_per_person`` crops and heatmaps, detector, base)
        exceeds the whole ``memory_budget_mb``: no image could make it fit."""
        cost = self.request_cost(pipeline, options, render)
        if cost.without_image <= self.memory.limit:
            return
        per_person = self.request_cost(pipeline, options.replace(max_persons=1), render)
        fixed = per_person.without_image - (per_person.crops + per_person.heatmaps)
        fits = max(0, (self.memory.limit - fixed) // max(1, per_person.crops + per_person.heatmaps))
        paddings = ",".join(f"{p:g}" for p in options.test_paddings) or "none"
        raise InvalidParameter(
            f"max_persons: expected at most {fits} with flip={str(bool(options.flip)).lower()} "
            f"and test_paddings={paddings} ({options.crops_per_person} crops per person; "
            f"memory_budget_mb={self.memory.limit // MB}), got {options.max_persons}"
        )

    def reserve_memory(
        self, cost: RequestCost, width: int, height: int, now: RequestCost | None = None
    ) -> int:
        """Reserve ``now.total`` bytes of the memory budget (default ``cost.total``; returned:
        release them when the work has stopped).  Refuses with 413 naming the image size when
        ``cost`` (the request at its most persons) can never fit, with ``Overloaded`` (503)
        while others hold the budget.  ``now``: the part needed before the persons are counted
        (:meth:`grow_memory` adds theirs)."""
        if cost.total > self.memory.limit:
            raise PayloadTooLarge(
                f"image: expected one whose estimated request memory fits memory_budget_mb "
                f"({self.memory.limit // MB} MB; {-(-cost.image_decode // MB)} MB of it for "
                f"{width}×{height} pixels), got {-(-cost.total // MB)} MB"
            )
        nbytes = (now or cost).total
        self.memory.reserve(nbytes)
        return nbytes

    def grow_memory(self, reserved: int, cost: RequestCost) -> int:
        """Grow a reservation of ``reserved`` bytes to ``cost.total`` (the request with its
        persons counted): ``Overloaded`` (503) while others hold the budget; the new reserved
        bytes are returned (release them when the work has stopped)."""
        extra = cost.total - reserved
        if extra <= 0:
            return reserved
        self.memory.reserve(extra)
        return reserved + extra

    # --- description ------------------------------------------------------------------------
    def response_model_info(self) -> dict[str, Any]:
        """The request-independent part of a response's ``model`` block (cached once ready)."""
        cached = self._response_info
        if cached is not None:
            return cached
        info = self.model_info()
        first = info.pose_models[0] if info.pose_models else None
        out = {
            "pose_models": [m.name for m in info.pose_models],
            "detector": info.detector,
            "keypoint_names": list(self.keypoint_names()),
            "input_size": list(first.input_size) if first else [],
            "heatmap_size": list(first.heatmap_size) if first else [],
            "batching": info.batching.enabled,
        }
        if self.ready.is_set():
            self._response_info = out
        return out

    def resolved_decode(self) -> str:
        """The default decode method: the setting, else the (first) pose model's card."""
        if self.settings.pipeline.decode is not None or self.pipeline is None:
            return str(self.settings.pipeline.decode or "model card")
        return str(self.pipeline.resolve_options(self.pipeline.options).decode)

    def keypoint_names(self) -> tuple[str, ...]:
        models = _pose_models_of(self.pipeline)
        return tuple(models[0].spec.keypoint_names) if models else ()

    def model_info(self) -> ModelsResponse:
        """``GET /v1/models``: the loaded models and the settings they run with."""
        s = self.settings
        entries = []
        providers: set[str] = set()
        for m in _pose_models_of(self.pipeline):
            inner = _unwrap(m)
            spec = m.spec
            providers.update(getattr(inner, "providers", []) or [])
            entries.append(
                PoseModelEntry(
                    name=spec.name,
                    path=Path(str(getattr(inner, "path", spec.name))).name,
                    arch=spec.arch,
                    input_size=list(spec.input_size),
                    heatmap_size=list(spec.heatmap_size),
                    keypoints=spec.num_keypoints,
                    codec=spec.codec,
                    decoded_output=bool(spec.decoded_output),
                    **_runtime_of(inner),
                )
            )
        detector = getattr(self.pipeline, "detector", None)
        det_name = s.detector if not self.injected else type(detector).__name__
        det_providers = getattr(detector, "providers", None)
        if det_providers:
            providers.update(det_providers)
        return ModelsResponse(
            ready=self.ready.is_set(),
            pose_models=entries,
            detector=det_name,
            providers=",".join(sorted(providers)) or s.providers,
            decode=self.resolved_decode(),
            profile=ProfileInfo.model_validate(s.profile_report()),
            batching=BatchingInfo(
                # the pipeline's pose models, built or injected (not ``self.batchers``,
                # which lists only the batchers built here)
                enabled=any(isinstance(m, MicroBatcher) for m in _pose_models_of(self.pipeline)),
                max_batch=s.max_batch,
                max_wait_ms=s.max_wait_ms,
                queue_size=s.queue_size,
                workers=s.batch_workers,
                max_inflight_requests=s.max_inflight_requests,
            ),
        )
