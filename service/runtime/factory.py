"""Build the detector, the pose model(s) and the pipeline from :class:`Settings`."""

from __future__ import annotations

import logging
from pathlib import Path

from darkpose.service.core.cards import ModelKind
from darkpose.service.core.errors import ModelError
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.types import Detector, PoseModel
from darkpose.service.runtime.cards import load_card, resolve_card
from darkpose.service.runtime.detector_build import (
    build_detector_from_config,
    detector_model_files,
    existing_model_file,
)
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
    paths = [existing_model_file("pose model", n, settings) for n in settings.pose_model_files]
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


def check_model_files(settings: Settings) -> list[Path]:
    """What ``darkpose serve`` checks before it binds its port, without loading a model: every
    pose and detector ONNX file the settings name exists and its model card resolves (a card of
    the wrong kind or a broken card, or none where the detector needs one, is a
    :class:`ModelError`).  Returns the files checked."""
    if not settings.pose_models:
        raise ModelError("pose_models: expected at least one model file, got an empty list")
    checked = [
        ("pose model", existing_model_file("pose model", name, settings), False)
        for name in settings.pose_model_files
    ]
    checked += detector_model_files(settings.detector, settings)
    for what, path, needs_card in checked:
        kind: ModelKind = "pose" if what == "pose model" else "detector"
        try:
            if needs_card:
                load_card(path, kind, log_level=logging.DEBUG)
            else:
                resolve_card(path, kind=kind, log_level=logging.DEBUG)
        except ModelError as exc:  # name the file: the card errors may not
            raise ModelError(
                exc.message if str(path) in exc.message else f"{what} {path}: {exc.message}"
            ) from exc
    return [path for _, path, _ in checked]


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
