"""SNIPER-style multi-scale chips around any :class:`~darkpose.service.core.types.Detector`.

SNIPER (Singh et al., 2018) detects on an image pyramid, but instead of running the network on
every full pyramid level it cuts each level into fixed-size *chips* and keeps, per level, only
the objects whose size falls in that level's *valid range*: small objects come from the
up-scaled level (where they are large enough for the detector), large objects from the
down-scaled one (where they fit in one chip).  :class:`MultiScaleChipDetector` does this at
inference time for any detector:

1. for each scale ``f`` the image (H, W) is resized to ``(round(H f), round(W f))``; the
   special scale ``"fit"`` resizes so that the longer side equals ``chip_size`` (SNIPER's
   lowest scale, one chip covers the whole image);
2. the level is covered by ``chip_size``-px chips at ``stride`` (overlapping when
   ``stride < chip_size``; the last chip of a row/column is aligned to the level's border);
3. the inner detector runs on every chip; a box touching a chip border that is not an image
   border (within ``border_margin`` px) is *truncated* and dropped — an overlapping chip sees
   the object whole when it is smaller than ``chip_size - stride`` (scaled px);
4. boxes are mapped back to the image (pixel centres at integer positions:
   ``x = (x_level + 0.5) / f - 0.5``), kept when ``sqrt(w h)`` (image px) lies in the scale's
   ``valid_range`` ``[lo, hi)``, and all levels are merged by greedy NMS
   (:func:`darkpose.service.core.nms.nms_boxes`).

:class:`ScaledDetector` runs a detector on one resized copy of the image (``yolox@2x``).
Boxes are clipped to ``[0, W] x [0, H]`` like
:class:`~darkpose.service.runtime.detectors.YoloxDetector`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from darkpose.service.core.choices import IoU, PersonCount, check
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.nms import nms_boxes
from darkpose.service.core.types import F32, Detections, Detector
from darkpose.service.runtime.detectors import check_image as _check_image
from darkpose.service.runtime.detectors import clip_boxes

logger = logging.getLogger(__name__)

Scale = float | Literal["fit"]

#: SNIPER-like defaults for a detector whose input is ~416-640 px: a whole-image pass with
#: chips of 512 px (large persons) and a 2x pass (small persons).  Valid ranges are
#: ``sqrt(w h)`` in original image pixels, ``[lo, hi)``.
DEFAULT_SCALES: tuple[Scale, ...] = ("fit", 2.0)
DEFAULT_VALID_RANGES: tuple[tuple[float, float], ...] = ((40.0, math.inf), (0.0, 120.0))
DEFAULT_CHIP_SIZE = 512
DEFAULT_STRIDE = 384


def chip_origins(length: int, chip_size: int, stride: int) -> list[int]:
    """Start positions of chips of ``chip_size`` covering ``[0, length)`` at ``stride``; the
    last chip is aligned to the end (``length - chip_size``).  One chip at 0 when the level is
    not longer than a chip."""
    if length <= chip_size:
        return [0]
    starts = list(range(0, length - chip_size, stride))
    if not starts or starts[-1] != length - chip_size:
        starts.append(length - chip_size)
    return starts


def resize_factor(scale: Scale, image_size: tuple[int, int], chip_size: int) -> float:
    """The resize factor of ``scale`` for an image of ``image_size`` (W, H)."""
    if scale == "fit":
        return chip_size / max(image_size)
    return float(scale)


def resize_level(
    image: npt.NDArray[np.uint8], factor: float
) -> tuple[npt.NDArray[np.uint8], float, float]:
    """``image`` resized by ``factor`` (bilinear; area when shrinking) → (level, fx, fy) with the
    exact per-axis factors ``level_W / W`` and ``level_H / H``."""
    h, w = image.shape[:2]
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    if (nw, nh) == (w, h):
        return image, 1.0, 1.0
    interp = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    level: npt.NDArray[np.uint8] = np.asarray(
        cv2.resize(image, (nw, nh), interpolation=interp), np.uint8
    )
    return level, nw / w, nh / h


def level_to_image(boxes: F32, fx: float, fy: float) -> F32:
    """Boxes (M, 4) xyxy in level px → image px (pixel centres at integer positions)."""
    out = boxes.astype(np.float64).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] + 0.5) / fx - 0.5
    out[:, [1, 3]] = (out[:, [1, 3]] + 0.5) / fy - 0.5
    return out.astype(np.float32)


def _valid_boxes(boxes: F32, scores: F32) -> tuple[F32, F32]:
    ok = (
        np.isfinite(boxes).all(axis=1)
        & np.isfinite(scores)
        & (boxes[:, 2] - boxes[:, 0] > 1e-3)
        & (boxes[:, 3] - boxes[:, 1] > 1e-3)
    )
    return boxes[ok], scores[ok]


class ScaledDetector:
    """Run ``detector`` on the image resized by ``factor`` and map boxes back (``yolox@2x``).

    ``detect(image)``: BGR uint8 (H, W, 3) → :class:`Detections` in image px.
    """

    def __init__(self, detector: Detector, factor: float) -> None:
        if not (math.isfinite(factor) and 0.0 < factor <= 8.0):
            raise InvalidParameter(f"scale factor: expected a value in (0, 8], got {factor}")
        self.detector = detector
        self.factor = float(factor)
        self.name = f"{getattr(detector, 'name', type(detector).__name__)}@{factor:g}x"

    def __repr__(self) -> str:
        return f"ScaledDetector({self.detector!r}, factor={self.factor:g})"

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        _check_image(image)
        size = (int(image.shape[1]), int(image.shape[0]))
        level, fx, fy = resize_level(image, self.factor)
        det = self.detector.detect(level, score_threshold=score_threshold)
        if len(det) == 0:
            return Detections.empty()
        boxes = clip_boxes(level_to_image(np.asarray(det.boxes, np.float32), fx, fy), size)
        boxes, scores = _valid_boxes(boxes, np.asarray(det.scores, np.float32))
        return Detections(boxes, scores)


@dataclass(frozen=True)
class Chip:
    """One chip: level index, the level's per-axis factors, the chip's origin and size in
    level px, and which of its borders coincide with the level's borders."""

    level: int
    fx: float
    fy: float
    x0: int
    y0: int
    w: int
    h: int
    at_left: bool
    at_top: bool
    at_right: bool
    at_bottom: bool


def default_valid_ranges(scales: Sequence[Scale]) -> tuple[tuple[float, float], ...]:
    """SNIPER's split for ``"fit"`` + one up-scaling factor (either order): large objects
    (``DEFAULT_VALID_RANGES[0]``) from the ``"fit"`` level, small ones from the up-scaled
    level; any other set of scales keeps every size at every level."""
    if len(scales) == 2 and "fit" in scales:
        other = scales[1] if scales[0] == "fit" else scales[0]
        if other != "fit" and float(other) > 1.0:
            large, small = DEFAULT_VALID_RANGES
            return (large, small) if scales[0] == "fit" else (small, large)
    return tuple((0.0, math.inf) for _ in scales)


class MultiScaleChipDetector:
    """SNIPER-style multi-scale chip inference around ``detector`` (implements ``Detector``).

    Args:
        detector: any :class:`~darkpose.service.core.types.Detector`.
        scales: resize factors, or ``"fit"`` (longer side → ``chip_size``); default
            ``("fit", 2.0)``.
        chip_size: chip side in level pixels (default 512).
        stride: chip stride in level pixels, ``<= chip_size`` (default 384).
        valid_ranges: one ``(lo, hi)`` per scale: a box found at that scale is kept when
            ``lo <= sqrt(w h) < hi`` in *image* pixels (``math.inf`` allowed).
        nms_iou: IoU threshold of the final merge.
        border_margin: a box edge closer than this (level px) to an inner chip border counts as
            truncated by the chip and is dropped.
        max_detections: cap of the merged result.

    ``detect(image)``: BGR uint8 (H, W, 3) → :class:`Detections` (boxes (M, 4) xyxy float32
    image px clipped to ``[0, W] x [0, H]``, sorted by score).
    """

    def __init__(
        self,
        detector: Detector,
        scales: Sequence[Scale] = DEFAULT_SCALES,
        chip_size: int = DEFAULT_CHIP_SIZE,
        stride: int = DEFAULT_STRIDE,
        valid_ranges: Sequence[tuple[float, float]] | None = None,
        nms_iou: float = 0.65,
        border_margin: float = 2.0,
        max_detections: int = 100,
    ) -> None:
        scales = tuple(scales)
        if not scales:
            raise InvalidParameter("scales: expected at least one scale, got none")
        for s in scales:
            if s == "fit":
                continue
            if isinstance(s, str) or not (math.isfinite(float(s)) and 0.0 < float(s) <= 8.0):
                raise InvalidParameter(f"scales: expected 'fit' or a factor in (0, 8], got {s!r}")
        if not isinstance(chip_size, int) or chip_size < 32:
            raise InvalidParameter(f"chip_size: expected an int >= 32, got {chip_size!r}")
        if not isinstance(stride, int) or not 1 <= stride <= chip_size:
            raise InvalidParameter(
                f"stride: expected an int in [1, chip_size={chip_size}], got {stride!r}"
            )
        if valid_ranges is None:
            valid_ranges = default_valid_ranges(scales)
        ranges = tuple((float(lo), float(hi)) for lo, hi in valid_ranges)
        if len(ranges) != len(scales):
            raise InvalidParameter(
                f"valid_ranges: expected one (lo, hi) per scale ({len(scales)}), got {len(ranges)}"
            )
        for lo, hi in ranges:
            if not (0.0 <= lo < hi) or math.isnan(hi):
                raise InvalidParameter(f"valid_ranges: expected 0 <= lo < hi, got ({lo}, {hi})")
        check(IoU, nms_iou, "nms_iou")
        check(PersonCount, max_detections, "max_detections")
        if border_margin < 0:
            raise InvalidParameter(f"border_margin: expected >= 0, got {border_margin}")
        self.detector = detector
        self.scales: tuple[Scale, ...] = scales
        self.chip_size = chip_size
        self.stride = stride
        self.valid_ranges: tuple[tuple[float, float], ...] = ranges
        self.nms_iou = float(nms_iou)
        self.border_margin = float(border_margin)
        self.max_detections = int(max_detections)
        inner = getattr(detector, "name", type(detector).__name__)
        self.name = f"chips({inner})"

    def __repr__(self) -> str:
        return (
            f"MultiScaleChipDetector({self.detector!r}, scales={self.scales}, "
            f"chip_size={self.chip_size}, stride={self.stride}, "
            f"valid_ranges={self.valid_ranges})"
        )

    def plan(self, image_size: tuple[int, int]) -> list[Chip]:
        """All chips for an image of ``image_size`` (W, H), level by level."""
        w, h = image_size
        chips: list[Chip] = []
        for li, scale in enumerate(self.scales):
            f = resize_factor(scale, image_size, self.chip_size)
            lw, lh = max(1, round(w * f)), max(1, round(h * f))
            fx, fy = lw / w, lh / h
            for y0 in chip_origins(lh, self.chip_size, self.stride):
                for x0 in chip_origins(lw, self.chip_size, self.stride):
                    cw, ch = min(self.chip_size, lw), min(self.chip_size, lh)
                    chips.append(
                        Chip(
                            li, fx, fy, x0, y0, cw, ch,
                            at_left=x0 == 0,
                            at_top=y0 == 0,
                            at_right=x0 + cw >= lw,
                            at_bottom=y0 + ch >= lh,
                        )
                    )  # fmt: skip
        return chips

    def _truncated(self, boxes: F32, chip: Chip) -> npt.NDArray[np.bool_]:
        """(M,) True where a box (chip px) touches an inner chip border."""
        m = self.border_margin
        x1, y1, x2, y2 = boxes.T
        cut = np.zeros(boxes.shape[0], bool)
        if not chip.at_left:
            cut |= x1 <= m
        if not chip.at_top:
            cut |= y1 <= m
        if not chip.at_right:
            cut |= x2 >= chip.w - m
        if not chip.at_bottom:
            cut |= y2 >= chip.h - m
        return cut

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        """Persons in ``image``: every chip through the inner detector (with
        ``score_threshold``), boxes mapped back, range-filtered and merged by NMS."""
        _check_image(image)
        size = (int(image.shape[1]), int(image.shape[0]))
        chips = self.plan(size)
        levels: dict[int, npt.NDArray[np.uint8]] = {}
        all_boxes: list[F32] = []
        all_scores: list[F32] = []
        for chip in chips:
            if chip.level not in levels:
                f = resize_factor(self.scales[chip.level], size, self.chip_size)
                levels[chip.level] = resize_level(image, f)[0]
            level = levels[chip.level]
            crop = np.ascontiguousarray(
                level[chip.y0 : chip.y0 + chip.h, chip.x0 : chip.x0 + chip.w]
            )
            det = self.detector.detect(crop, score_threshold=score_threshold)
            if len(det) == 0:
                continue
            boxes = np.asarray(det.boxes, np.float32)
            scores = np.asarray(det.scores, np.float32)
            keep = ~self._truncated(boxes, chip)
            boxes, scores = boxes[keep], scores[keep]
            if boxes.shape[0] == 0:
                continue
            boxes = boxes + np.array([chip.x0, chip.y0, chip.x0, chip.y0], np.float32)
            boxes = clip_boxes(level_to_image(boxes, chip.fx, chip.fy), size)
            boxes, scores = _valid_boxes(boxes, scores)
            side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            lo, hi = self.valid_ranges[chip.level]
            ok = (side >= lo) & (side < hi)
            all_boxes.append(boxes[ok])
            all_scores.append(scores[ok])
        if not all_boxes:
            return Detections.empty()
        boxes = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        if boxes.shape[0] == 0:
            return Detections.empty()
        # nms_boxes keeps in score order (descending, ties by index)
        kept = nms_boxes(boxes, scores, self.nms_iou)[: self.max_detections]
        logger.debug("chips: %d chips, %d boxes → %d", len(chips), boxes.shape[0], kept.size)
        return Detections(boxes[kept], scores[kept])
