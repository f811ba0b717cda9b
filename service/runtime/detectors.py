"""Person detectors on onnxruntime.

:class:`YoloxDetector` runs a YOLOX ONNX export with raw head outputs (``decode_in_inference``
off): input (1, 3, S, S) float32 **BGR 0–255**, letterboxed to the top-left corner with pad value
114; output (1, A, 5 + C) with, per anchor, (cx, cy, w, h) in grid units, objectness and C class
scores (both already sigmoid-ed).  The grid decode over strides 8/16/32 happens here:
``xy = (xy + grid) * stride``, ``wh = exp(wh) * stride``.  Person = class 0, score = obj × cls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from service.core.errors import InvalidImage, InvalidParameter, ModelError
from service.core.nms import nms_boxes
from service.core.types import F32, Detections
from service.runtime.onnx import create_session

logger = logging.getLogger(__name__)

PAD_VALUE = 114
STRIDES: tuple[int, ...] = (8, 16, 32)


def clip_boxes(boxes: npt.NDArray[Any], image_size: tuple[int, int]) -> npt.NDArray[Any]:
    """A copy of (M, 4) xyxy ``boxes`` clipped to ``[0, W] x [0, H]`` (``image_size`` = (W, H))."""
    w, h = image_size
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, float(w))
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, float(h))
    return out


def non_empty(boxes: npt.NDArray[Any], min_size: float = 1e-3) -> npt.NDArray[np.bool_]:
    """(M,) mask of (M, 4) xyxy boxes wider and taller than ``min_size`` px."""
    return (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)


def check_image(image: npt.NDArray[np.uint8]) -> None:
    """:class:`InvalidImage` unless ``image`` is a non-empty BGR uint8 (H, W, 3) array."""
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"image: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImage(
            f"image: expected BGR uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidImage(f"image: expected a non-empty image, got {tuple(image.shape)}")


def letterbox(
    image: npt.NDArray[np.uint8], size: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], float]:
    """Resize ``image`` (H, W, 3) to fit ``size`` (W, H) keeping its aspect, paste it top-left on
    a canvas of ``PAD_VALUE``; returns ((1, 3, H, W) float32 BGR 0–255, ratio)."""
    h, w = image.shape[:2]
    tw, th = size
    r = min(tw / w, th / h)
    # as YOLOX's ValTransform: floor of the scaled size, bilinear
    nw, nh = min(max(1, int(w * r)), tw), min(max(1, int(h * r)), th)
    canvas = np.full((th, tw, 3), PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    return np.ascontiguousarray(blob), r


def make_grids(size: tuple[int, int], strides: tuple[int, ...] = STRIDES) -> tuple[F32, F32]:
    """Anchor grid (A, 2) (x, y cell indices) and per-anchor stride (A, 1) for an input ``size``
    (W, H), in the YOLOX head's order (stride-major, then row, then column)."""
    grids, expanded = [], []
    for s in strides:
        gw, gh = size[0] // s, size[1] // s
        yv, xv = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack((xv, yv), axis=-1).reshape(-1, 2))
        expanded.append(np.full((gw * gh, 1), s))
    return (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(expanded).astype(np.float32),
    )


class YoloxDetector:
    """YOLOX person detector (implements :class:`service.core.types.Detector`).

    ``detect(image)``: ``image`` BGR uint8 (H, W, 3) → :class:`Detections` (boxes (M, 4) xyxy
    float32 image px, clipped to the image, sorted by score; M ≤ ``max_detections``).
    """

    def __init__(
        self,
        path: str | Path,
        score_threshold: float = 0.3,
        nms_iou: float = 0.65,
        max_detections: int = 100,
        providers: str = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        person_class: int = 0,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise InvalidParameter(f"score_threshold: expected [0, 1], got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise InvalidParameter(f"nms_iou: expected (0, 1], got {nms_iou}")
        if max_detections < 1:
            raise InvalidParameter(f"max_detections: expected >= 1, got {max_detections}")
        self.path = Path(path)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.person_class = int(person_class)
        self.session = create_session(
            self.path,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
        self.providers: list[str] = list(self.session.get_providers())
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or not isinstance(shape[2], int) or not isinstance(shape[3], int):
            raise ModelError(f"YOLOX {self.path.name}: expected input (1, 3, H, W), got {shape}")
        self.input_name: str = inp.name
        self.input_size: tuple[int, int] = (int(shape[3]), int(shape[2]))
        self.grid, self.strides = make_grids(self.input_size)
        out_shape = self.session.get_outputs()[0].shape
        n_anchors = self.grid.shape[0]
        if len(out_shape) != 3 or (isinstance(out_shape[1], int) and out_shape[1] != n_anchors):
            raise ModelError(
                f"YOLOX {self.path.name}: expected output (1, {n_anchors}, 5 + C), got {out_shape}"
            )
        self.name = self.path.stem

    def __repr__(self) -> str:
        return f"YoloxDetector({self.path.name!r}, providers={self.providers})"

    def infer_raw(self, image: npt.NDArray[np.uint8]) -> tuple[F32, float]:
        """Letterbox + session run: raw output (A, 5 + C) float32 and the resize ratio."""
        check_image(image)
        blob, ratio = letterbox(image, self.input_size)
        out = self.session.run(None, {self.input_name: blob})[0]
        return np.asarray(out[0], dtype=np.float32), ratio

    def decode(
        self, raw: F32, ratio: float, image_size: tuple[int, int], score_threshold: float
    ) -> Detections:
        """Grid-decode raw output (A, 5 + C) → person :class:`Detections` in an image of
        ``image_size`` (W, H): score threshold, NMS, clip, ``max_detections``."""
        scores = raw[:, 4] * raw[:, 5 + self.person_class]
        idx = np.flatnonzero(scores > score_threshold)
        if idx.size == 0:
            return Detections.empty()
        cand = raw[idx]
        stride = self.strides[idx]
        cxy = (cand[:, :2] + self.grid[idx]) * stride
        wh = np.exp(np.minimum(cand[:, 2:4], 20.0)) * stride
        boxes = np.concatenate((cxy - wh / 2, cxy + wh / 2), axis=1) / ratio
        boxes = clip_boxes(boxes, image_size)
        sc = scores[idx]
        ok = non_empty(boxes)
        if not ok.any():
            return Detections.empty()
        kept: F32 = boxes[ok].astype(np.float32)
        sc = sc[ok].astype(np.float32)
        keep = nms_boxes(kept, sc, self.nms_iou)[: self.max_detections]
        return Detections(kept[keep], sc[keep])

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        """Persons in ``image`` (BGR uint8 (H, W, 3)); ``score_threshold`` overrides the
        constructor's for this call."""
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        raw, ratio = self.infer_raw(image)
        return self.decode(raw, ratio, (int(image.shape[1]), int(image.shape[0])), thr)
