"""Build the detector, the pose model(s) and the pipeline from :class:`Settings`."""

from __future__ import annotations

import logging

from darkpose.service.core.errors import ModelError
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.types import Detector, PoseModel
from darkpose.service.runtime.detector_config import build_detector_from_config
from darkpose.service.runtime.pose import OnnxPoseModel
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)


def build_detector(settings: Settings) -> Detector:
    """The person detector described by ``settings.detector``: a detector config (text form
    ``yolox``, ``chips(...)``, ``fused(...)``, or JSON;
    :mod:`darkpose.service.runtime.detector_config`)."""
    return build_detector_from_config(settings.detector, settings)


def build_pose_models(settings: Settings) -> list[PoseModel]:
    """One :class:`OnnxPoseModel` per entry of ``settings.pose_models`` (several = ensemble;
    their weights: ``settings.pose_model_weights``)."""
    if not settings.pose_models:
        raise ModelError("pose_models: expected at least one model file, got an empty list")
    paths = [settings.resolve_model(name) for name in settings.pose_model_files]
    for path in paths:
        if not path.is_file():
            raise ModelError(
                f"pose model: expected an existing ONNX file, got {path}{settings.model_dir_hint()}"
            )
    return [
        OnnxPoseModel(
            path,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            backend=settings.pose_backend,
            precision=settings.pose_precision,
        )
        for path in paths
    ]


def build_pipeline(settings: Settings | None = None) -> Pipeline:
    """Detector + pose model(s) + default :class:`PipelineOptions` from ``settings``."""
    s = settings or Settings()  # type: ignore[call-arg]
    pipeline = Pipeline(
        build_detector(s),
        build_pose_models(s),
        PipelineOptions.from_settings(s),
        weights=s.pose_model_weights,
    )
    o = pipeline.resolve_options()
    logger.info(
        "pipeline: detector=%s pose_models=%s decode=%s flip=%s det_score_threshold=%g "
        "max_persons=%d",
        s.detector,
        ",".join(str(m) for m in s.pose_models),
        o.decode,
        "on" if o.flip else "off",
        o.det_score_threshold,
        o.max_persons,
    )
    return pipeline
