"""Fusion of several person detectors with weighted boxes fusion (WBF).

Uses the ``ensemble-boxes`` library (extra ``detect``; Solovyev et al., "Weighted boxes fusion:
ensembling boxes from different object detection models"): boxes of every detector are
normalised to ``[0, 1]`` by the image size (x / W, y / H), clusters of boxes with IoU above
``iou_thr`` are fused into one box whose coordinates are the score-weighted mean and whose score
is the mean score (``conf_type="avg"``, scaled down when fewer detectors than weights found it),
then boxes go back to image pixels.  ``ensemble_boxes`` is imported lazily, so the serving
install works without it as long as no fused detector is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from darkpose.service.core.choices import IoU, PersonCount, Probability, check
from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.types import F32, Detections, Detector
from darkpose.service.runtime.detectors import check_image

logger = logging.getLogger(__name__)

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def _wbf() -> Any:
    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ModelError(
            "fused detectors: expected the 'ensemble-boxes' package (pip install "
            f"'darkpose-service[detect]'), got ImportError: {exc}"
        ) from exc
    return weighted_boxes_fusion


def fuse_detections(
    detections: Sequence[Detections],
    image_size: tuple[int, int],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.55,
    skip_box_thr: float = 0.0,
    conf_type: str = "avg",
    max_detections: int = 100,
) -> Detections:
    """Weighted boxes fusion of per-detector results on one image of ``image_size`` (W, H).

    detections: one :class:`Detections` per detector (boxes (M_i, 4) xyxy image px).
    Returns fused :class:`Detections` (boxes (M, 4) float32 image px clipped to the image,
    scores (M,) float32 in [0, 1], sorted by score, M <= ``max_detections``).
    """
    w, h = image_size
    if w < 1 or h < 1:
        raise InvalidParameter(f"image_size: expected (W, H) >= 1, got {image_size}")
    if not detections:
        raise InvalidParameter("detections: expected at least one detector's result, got none")
    if weights is not None and len(weights) != len(detections):
        raise InvalidParameter(
            f"weights: expected one per detector ({len(detections)}), got {len(weights)}"
        )
    scale = np.array([w, h, w, h], np.float64)
    boxes_list, scores_list, labels_list = [], [], []
    for det in detections:
        b = np.asarray(det.boxes, np.float64).reshape(-1, 4) / scale
        s = np.asarray(det.scores, np.float64).reshape(-1)
        ok = np.isfinite(b).all(axis=1) & np.isfinite(s)
        b = np.clip(b[ok], 0.0, 1.0)
        s = np.clip(s[ok], 0.0, 1.0)
        boxes_list.append(b.tolist())
        scores_list.append(s.tolist())
        labels_list.append([0] * len(s))
    if sum(len(s) for s in scores_list) == 0:
        return Detections.empty()
    boxes, scores, _ = _wbf()(
        boxes_list,
        scores_list,
        labels_list,
        weights=None if weights is None else [float(x) for x in weights],
        iou_thr=iou_thr,
        skip_box_thr=skip_box_thr,
        conf_type=conf_type,
    )
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    scores = np.clip(np.asarray(scores, np.float64).reshape(-1), 0.0, 1.0)
    ok = (boxes[:, 2] - boxes[:, 0] > 1e-3) & (boxes[:, 3] - boxes[:, 1] > 1e-3)
    boxes, scores = boxes[ok], scores[ok]
    order = np.argsort(-scores, kind="stable")[:max_detections]
    out_boxes: F32 = boxes[order].astype(np.float32)
    out_scores: F32 = scores[order].astype(np.float32)
    return Detections(out_boxes, out_scores)


class FusedDetector:
    """Several detectors fused by WBF (implements :class:`~darkpose.service.core.types.Detector`).

    Args:
        detectors: the detectors to run on every image (e.g. YOLOX at 1x, YOLOX on chips, HTC).
        weights: one weight per detector (default all 1).
        iou_thr: IoU above which boxes of a cluster are fused (WBF ``iou_thr``).
        skip_box_thr: input boxes with a lower score are ignored.
        conf_type: WBF score rule, one of ``avg`` (default), ``max``, ``box_and_model_avg``,
            ``absent_model_aware_avg``.
        max_detections: cap of the fused result.

    ``detect(image)``: BGR uint8 (H, W, 3) → :class:`Detections` in image px.
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        weights: Sequence[float] | None = None,
        iou_thr: float = 0.55,
        skip_box_thr: float = 0.0,
        conf_type: str = "avg",
        max_detections: int = 100,
    ) -> None:
        detectors = list(detectors)
        if not detectors:
            raise InvalidParameter("detectors: expected at least one detector, got none")
        if weights is not None:
            weights = [float(x) for x in weights]
            if len(weights) != len(detectors):
                raise InvalidParameter(
                    f"weights: expected one per detector ({len(detectors)}), got {len(weights)}"
                )
            if any(not np.isfinite(x) or x <= 0 for x in weights):
                raise InvalidParameter(f"weights: expected positive numbers, got {weights}")
        check(IoU, iou_thr, "iou_thr")
        check(Probability, skip_box_thr, "skip_box_thr")
        check(PersonCount, max_detections, "max_detections")
        if conf_type not in CONF_TYPES:
            raise InvalidParameter(f"conf_type: expected one of {CONF_TYPES}, got {conf_type!r}")
        _wbf()  # fail at construction time, not on the first request
        self.detectors = detectors
        self.weights = weights
        self.iou_thr = float(iou_thr)
        self.skip_box_thr = float(skip_box_thr)
        self.conf_type = conf_type
        self.max_detections = int(max_detections)
        names = [getattr(d, "name", type(d).__name__) for d in detectors]
        self.name = f"fused({','.join(names)})"

    def __repr__(self) -> str:
        return f"FusedDetector({self.detectors!r}, weights={self.weights})"

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        """Fused persons in ``image``; ``score_threshold`` goes to every member detector and
        applies to the fused scores."""
        check_image(image)
        size = (int(image.shape[1]), int(image.shape[0]))
        results = [d.detect(image, score_threshold=score_threshold) for d in self.detectors]
        fused = fuse_detections(
            results,
            size,
            weights=self.weights,
            iou_thr=self.iou_thr,
            skip_box_thr=self.skip_box_thr,
            conf_type=self.conf_type,
            max_detections=self.max_detections,
        )
        if score_threshold is None:
            return fused
        # fusion can lower a score (conf=avg: a box only some members found), so the per-call
        # threshold applies to the fused scores too
        keep = fused.scores >= score_threshold
        return Detections(fused.boxes[keep], fused.scores[keep])
