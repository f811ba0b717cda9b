"""Building the detector a :data:`~darkpose.service.runtime.detector_config.DetectorConfig`
describes, and finding the model files it loads.

Leaves that appear several times (``fused(yolox@1x,yolox@chips)``) share one instance;
configurations that cannot be built (missing files, mmdet not installed) raise
:class:`ModelError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from darkpose.service.core.errors import ModelError
from darkpose.service.core.types import Detector
from darkpose.service.runtime import chips as ch
from darkpose.service.runtime.detector_config import (
    ChipsConfig,
    DetectorConfig,
    FusedConfig,
    HtcConfig,
    HtcSettings,
    OnnxConfig,
    OnnxLeafConfig,
    PicoDetConfig,
    YoloxConfig,
    parse_detector_config,
)
from darkpose.service.runtime.detectors import OnnxDetector, PicoDetDetector, YoloxDetector
from darkpose.service.runtime.fusion import FusedDetector
from darkpose.service.runtime.htc import HtcDetector, parse_test_scale
from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)


class _Builder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache: dict[str, Detector] = {}

    def build(self, spec: DetectorConfig) -> Detector:
        key = str(spec)
        if key not in self.cache:
            self.cache[key] = self._build(spec)
        return self.cache[key]

    def _build(self, spec: DetectorConfig) -> Detector:
        if spec.variant is not None:
            inner = self.build(spec.without_variant())  # type: ignore[arg-type]
            if spec.variant == "chips":
                return self.chips(
                    inner, ChipsConfig.model_validate({"detector": spec.without_variant()})
                )
            return inner if spec.variant == 1.0 else ch.ScaledDetector(inner, spec.variant)
        if isinstance(spec, YoloxConfig):
            return self.onnx_leaf(spec, YoloxDetector, self.settings.detector_model)
        if isinstance(spec, PicoDetConfig):
            return self.onnx_leaf(spec, PicoDetDetector, self.settings.picodet_model)
        if isinstance(spec, OnnxConfig):
            return self.onnx_leaf(spec, OnnxDetector, spec.model)
        if isinstance(spec, HtcConfig):
            return self.htc(spec)
        if isinstance(spec, ChipsConfig):
            return self.chips(self.build(spec.detector), spec)
        return self.fused(spec)

    def onnx_leaf(
        self, spec: OnnxLeafConfig, cls: type[OnnxDetector], default_model: str
    ) -> Detector:
        s = self.settings
        path = existing_model_file(f"{spec.kind} model", spec.model or default_model, s)
        return cls(
            path,
            score_threshold=s.pipeline.det_score_threshold if spec.score is None else spec.score,
            nms_iou=spec.nms,
            max_detections=s.det_max_detections,
            pre_nms_topk=s.det_pre_nms_topk,
            providers=s.providers,
            intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
            backend=s.detector_backend,
            precision=s.detector_precision,
            default_nms_iou=s.det_nms_iou,
        )

    def htc(self, spec: HtcConfig) -> Detector:
        d = HtcSettings()
        scale = spec.scale or d.scale
        checkpoint = spec.checkpoint or d.checkpoint
        return HtcDetector(
            spec.config or d.config,
            None if checkpoint is None else self.settings.resolve_model(checkpoint),
            random_weights=spec.random,
            trusted_checkpoint=spec.trusted,
            score_threshold=(
                self.settings.pipeline.det_score_threshold if spec.score is None else spec.score
            ),
            max_detections=self.settings.det_max_detections,
            device=spec.device or d.device,
            test_scale=None if scale is None else parse_test_scale(scale),
            num_threads=self.settings.intra_op_threads,
        )

    def chips(self, inner: Detector, spec: ChipsConfig) -> Detector:
        return ch.MultiScaleChipDetector(
            inner,
            scales=spec.scales,
            valid_ranges=spec.ranges,
            chip_size=spec.chip,
            stride=spec.stride,
            nms_iou=self.settings.det_nms_iou if spec.nms is None else spec.nms,
            border_margin=spec.margin,
            max_detections=self.settings.det_max_detections,
        )

    def fused(self, spec: FusedConfig) -> Detector:
        return FusedDetector(
            [self.build(c) for c in spec.detectors],
            weights=spec.weights,
            iou_thr=spec.iou,
            skip_box_thr=spec.skip,
            conf_type=spec.conf,
            max_detections=self.settings.det_max_detections,
        )


def existing_model_file(what: str, name: str, settings: Settings) -> Path:
    """The file of model ``name`` (relative to ``settings.model_dir`` or absolute);
    :class:`ModelError` naming ``what`` and the fix when there is no such file."""
    path = settings.resolve_model(name)
    if not path.is_file():
        raise ModelError(
            f"{what}: expected an existing ONNX file, got {path}{settings.model_dir_hint(name)}"
        )
    return path


#: ONNX leaf kinds → (the setting naming their default file, ``None``: ``model=`` only;
#: whether the file needs a model card: YOLOX has a built-in one).
_ONNX_LEAVES: dict[type[OnnxLeafConfig], tuple[str | None, bool]] = {
    YoloxConfig: ("detector_model", False),
    PicoDetConfig: ("picodet_model", True),
    OnnxConfig: (None, True),
}


def detector_model_files(
    config: str | Mapping[str, Any] | DetectorConfig, settings: Settings
) -> list[tuple[str, Path, bool]]:
    """The ONNX files the detector ``config`` loads, without loading them: (what, path,
    whether the detector needs a model card for it).  ``ModelError`` for a missing file."""
    spec = parse_detector_config(config)
    out: list[tuple[str, Path, bool]] = []
    if isinstance(spec, OnnxLeafConfig):
        default_field, needs_card = _ONNX_LEAVES[type(spec)]
        default = "" if default_field is None else str(getattr(settings, default_field))
        what = f"{spec.kind} model"
        out.append((what, existing_model_file(what, spec.model or default, settings), needs_card))
    for child in spec.children:
        out.extend(detector_model_files(child, settings))
    return out


def build_detector_from_config(
    config: str | Mapping[str, Any] | DetectorConfig, settings: Settings
) -> Detector:
    """The :class:`~darkpose.service.core.types.Detector` described by ``config`` (the text
    form, JSON, or a :data:`DetectorConfig` tree), built with ``settings`` (model paths,
    providers, thresholds, ``det_max_detections``)."""
    spec = parse_detector_config(config)
    detector = _Builder(settings).build(spec)
    logger.info("detector: %s → %r", spec, detector)
    return detector
