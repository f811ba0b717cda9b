"""Card-driven person detectors on onnxruntime.

:class:`OnnxDetector` runs any single-input ONNX detector its
:class:`~darkpose.service.core.cards.ModelCard`
describes: pre-processing from ``card.input`` (``letterbox`` = aspect-preserving resize pasted
top-left on a canvas of ``pad_value``, or ``stretch`` = plain resize to the input size; colour
order; ``(pixel * pixel_scale - mean) / std``) and post-processing from the output layout
(:data:`OUTPUT_LAYOUTS`):

* ``yolox`` — raw YOLOX head (1, A, 5 + C): per anchor (cx, cy, w, h) in grid units, objectness
  and C class scores (already sigmoid-ed); grid decode over ``detector.strides``:
  ``xy = (xy + grid) * stride``, ``wh = exp(wh) * stride``; score = obj × cls[person_class];
* ``boxes_scores`` — ``boxes`` (1, A, 4) xyxy in input px and ``scores`` (1, C, A) (PicoDet
  exported without NMS); score = scores[person_class].

Then: score threshold, the ``pre_nms_topk`` highest-scoring candidates (a score threshold of 0
would otherwise send every anchor, 3,549 for YOLOX at 416², into NMS), boxes mapped from input
px to image px (letterbox: ``/ ratio``; stretch: ``* (W / input_W, H / input_H)``), clipped,
empty ones dropped, NMS in numpy (:func:`darkpose.service.core.nms.nms_boxes`), at most
``max_detections``.
:class:`YoloxDetector` / :class:`PicoDetDetector` are the two shipped kinds (a YOLOX file without
a card gets :data:`YOLOX_CARD`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from darkpose.service.core.cards import ModelCard, parse_card
from darkpose.service.core.choices import IoU, PersonCount, Probability, check
from darkpose.service.core.errors import InvalidImage, InvalidParameter, ModelError
from darkpose.service.core.nms import DEFAULT_PRE_NMS_TOPK, nms_boxes, top_k
from darkpose.service.core.types import F32, Detections
from darkpose.service.runtime.cards import load_card, resolve_card
from darkpose.service.runtime.onnx import create_session

logger = logging.getLogger(__name__)

PAD_VALUE = 114
STRIDES: tuple[int, ...] = (8, 16, 32)

#: The card of a YOLOX file that has none (the shared YOLOX-nano's values but its size).
YOLOX_CARD = parse_card(
    {
        "kind": "detector",
        "name": "yolox",
        "arch": "YOLOX",
        "input": {
            "size": [416, 416],
            "channel_order": "BGR",
            "pixel_scale": 1.0,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "resize": "letterbox",
            "pad_value": PAD_VALUE,
        },
        "outputs": [{"layout": "yolox"}],
        "detector": {"person_class": 0, "strides": list(STRIDES)},
    },
    "YOLOX_CARD",
)


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
    image: npt.NDArray[np.uint8], size: tuple[int, int], pad_value: float = PAD_VALUE
) -> tuple[npt.NDArray[np.float32], float]:
    """Resize ``image`` (H, W, 3) to fit ``size`` (W, H) keeping its aspect, paste it top-left on
    a canvas of ``pad_value``; returns ((1, 3, H, W) float32 BGR 0–255, ratio)."""
    h, w = image.shape[:2]
    tw, th = size
    r = min(tw / w, th / h)
    # as YOLOX's ValTransform: floor of the scaled size, bilinear
    nw, nh = min(max(1, int(w * r)), tw), min(max(1, int(h * r)), th)
    canvas = np.full((th, tw, 3), pad_value, np.float32)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = canvas.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(blob), r


def stretch(
    image: npt.NDArray[np.uint8], size: tuple[int, int]
) -> tuple[npt.NDArray[np.float32], tuple[float, float]]:
    """Plain bilinear resize of ``image`` (H, W, 3) to ``size`` (W, H), ignoring the aspect;
    returns ((1, 3, H, W) float32 BGR 0–255, (sx, sy) = input px per image px)."""
    h, w = image.shape[:2]
    tw, th = size
    resized = cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)
    blob = resized.transpose(2, 0, 1)[None].astype(np.float32)
    return np.ascontiguousarray(blob), (tw / w, th / h)


def input_to_image(boxes: F32, scale: tuple[float, float]) -> F32:
    """(M, 4) xyxy boxes in network-input px → image px, ``scale`` = (sx, sy) input px per image
    px (letterbox: (r, r); stretch: (input_W / W, input_H / H))."""
    sx, sy = scale
    out: F32 = (boxes / np.asarray([sx, sy, sx, sy], np.float32)).astype(np.float32)
    return out


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


def _normaliser(card: ModelCard) -> Callable[[F32], F32]:
    """BGR 0–255 (1, 3, H, W) → the network input the card describes."""
    inp = card.input
    rgb = inp.channel_order == "RGB"
    scale = np.float32(inp.pixel_scale)
    mean = np.asarray(inp.mean, np.float32).reshape(1, 3, 1, 1)
    inv_std = (1.0 / np.asarray(inp.std, np.float32)).reshape(1, 3, 1, 1)
    identity = not rgb and scale == 1.0 and not mean.any() and np.all(inv_std == 1.0)

    def run(blob: F32) -> F32:
        if identity:
            return blob
        x = blob[:, ::-1] if rgb else blob
        out: F32 = np.ascontiguousarray((x * scale - mean) * inv_std, dtype=np.float32)
        return out

    return run


class OnnxDetector:
    """A person detector described by its model card (implements
    :class:`darkpose.service.core.types.Detector`).

    ``detect(image, score_threshold=None)``: ``image`` BGR uint8 (H, W, 3) → :class:`Detections`
    (boxes (M, 4) xyxy float32 image px, clipped to the image, sorted by score; M ≤
    ``max_detections``).  ``card=None`` reads the file's card
    (:mod:`darkpose.service.runtime.cards`).
    ``nms_iou=None``: the card's ``detector.nms_iou``, else ``default_nms_iou`` (the builder
    passes ``DARKPOSE_DET_NMS_IOU``).  At most ``pre_nms_topk`` candidates (by score) enter NMS
    (``DARKPOSE_DET_PRE_NMS_TOPK``).
    """

    kind = "onnx"

    def __init__(
        self,
        path: str | Path,
        score_threshold: float = 0.3,
        nms_iou: float | None = None,
        max_detections: int = 100,
        pre_nms_topk: int = DEFAULT_PRE_NMS_TOPK,
        providers: str = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        card: ModelCard | None = None,
        backend: str | None = None,
        precision: str | None = None,
        default_nms_iou: float = 0.65,
    ) -> None:
        self.path = Path(path)
        self.card: ModelCard = self._card_of(self.path, card)
        if self.card.kind != "detector":
            raise ModelError(
                f"detector {self.path.name}: expected a detector card, got kind={self.card.kind}"
            )
        if nms_iou is None:
            nms_iou = self.card.detector_options.nms_iou or default_nms_iou
        if pre_nms_topk < 1:
            raise InvalidParameter(f"pre_nms_topk: expected >= 1, got {pre_nms_topk}")
        self.pre_nms_topk = int(pre_nms_topk)
        self.score_threshold = float(check(Probability, score_threshold, "score_threshold"))
        self.nms_iou = float(check(IoU, nms_iou, "nms_iou"))
        self.max_detections = int(check(PersonCount, max_detections, "max_detections"))
        self.person_class = self.card.detector_options.person_class
        self.layout = self.card.output_layout
        self.backend = backend or self.card.backend
        self.precision = precision or self.card.float_precision
        self.session = create_session(
            self.path,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            backend=self.backend,
            precision=self.precision,
        )
        self.providers: list[str] = list(self.session.get_providers())
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(
                f"detector {self.path.name}: expected 1 graph input, got {[i.name for i in inputs]}"
            )
        shape = inputs[0].shape
        if len(shape) != 4 or not isinstance(shape[2], int) or not isinstance(shape[3], int):
            raise ModelError(
                f"detector {self.path.name}: expected a fixed input (1, 3, H, W), got {shape}"
            )
        self.input_name: str = self.card.input.name or inputs[0].name
        if self.input_name != inputs[0].name:
            raise ModelError(
                f"detector {self.path.name}: card input {self.input_name!r}, expected the "
                f"graph's {inputs[0].name!r}"
            )
        self.input_size: tuple[int, int] = (int(shape[3]), int(shape[2]))
        if self.input_size != tuple(self.card.input.size):
            raise ModelError(
                f"detector {self.path.name}: card input size {tuple(self.card.input.size)}, "
                f"expected the graph's {self.input_size}"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names: list[str] = [
            self.card.output_name(layout) or outputs[i]
            for i, layout in enumerate(OUTPUT_LAYOUTS[self.layout].outputs)
        ]
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise ModelError(
                f"detector {self.path.name}: card outputs {self.output_names}, expected names "
                f"of the graph, got {outputs}"
            )
        self._normalise = _normaliser(self.card)
        self._decode = OUTPUT_LAYOUTS[self.layout].build(self)
        self.name = self.path.stem

    @classmethod
    def _card_of(cls, path: Path, card: ModelCard | None) -> ModelCard:
        """The card the detector runs with: ``card``, else the file's (required here)."""
        return card or load_card(path, "detector")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name!r}, providers={self.providers})"

    def preprocess(
        self, image: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], tuple[float, float]]:
        """``image`` → (network input (1, 3, H, W) float32, (sx, sy) input px per image px)."""
        check_image(image)
        if self.card.input.resize == "letterbox":
            blob, r = letterbox(image, self.input_size, self.card.input.pad_value)
            return self._normalise(blob), (r, r)
        blob, scale = stretch(image, self.input_size)
        return self._normalise(blob), scale

    def run(self, blob: npt.NDArray[np.float32]) -> list[F32]:
        """One session run: the card's outputs, batch dimension dropped."""
        outs = self.session.run(self.output_names, {self.input_name: blob})
        return [np.asarray(o[0], dtype=np.float32) for o in outs]

    def postprocess(
        self,
        outputs: list[F32],
        scale: tuple[float, float],
        image_size: tuple[int, int],
        score_threshold: float,
    ) -> Detections:
        """Raw outputs → :class:`Detections` in an image of ``image_size`` (W, H)."""
        boxes, scores = self._decode(outputs, score_threshold)
        if scores.size == 0:
            return Detections.empty()
        keep_top = top_k(scores, self.pre_nms_topk)
        boxes, scores = boxes[keep_top], scores[keep_top]
        boxes = clip_boxes(input_to_image(boxes, scale), image_size)
        ok = non_empty(boxes)
        if not ok.any():
            return Detections.empty()
        kept: F32 = boxes[ok].astype(np.float32)
        sc = scores[ok].astype(np.float32)
        keep = nms_boxes(kept, sc, self.nms_iou)[: self.max_detections]
        return Detections(kept[keep], sc[keep])

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        """Persons in ``image`` (BGR uint8 (H, W, 3)); ``score_threshold`` overrides the
        constructor's for this call."""
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        blob, scale = self.preprocess(image)
        outputs = self.run(blob)
        return self.postprocess(outputs, scale, (int(image.shape[1]), int(image.shape[0])), thr)


# -------------------------------------------------------------------------- output layouts
Decode = Callable[[list[F32], float], tuple[F32, F32]]


class _Layout:
    """An output layout: its output roles (in card order) and a builder of its decode
    ``(outputs, score_threshold) -> (boxes (M, 4) xyxy input px, scores (M,))``."""

    def __init__(self, outputs: tuple[str, ...], build: Callable[[OnnxDetector], Decode]) -> None:
        self.outputs = outputs
        self.build = build


class _YoloxDecode:
    """The ``yolox`` layout's decode for one detector: its anchor grid (A, 2) (x, y cell
    indices) and per-anchor stride (A, 1), built once from the input size and the card's
    ``detector.strides``."""

    def __init__(self, det: OnnxDetector) -> None:
        self.name = det.path.name
        self.person = det.person_class
        self.grid, self.stride = make_grids(det.input_size, det.card.detector_options.strides)

    def __call__(self, outputs: list[F32], thr: float) -> tuple[F32, F32]:
        raw, grid = outputs[0], self.grid
        if raw.ndim != 2 or raw.shape[0] != grid.shape[0] or raw.shape[1] <= 5 + self.person:
            raise ModelError(
                f"YOLOX {self.name}: expected output (1, {grid.shape[0]}, 5 + C), "
                f"got {(1, *raw.shape)}"
            )
        return decode_yolox(raw, grid, self.stride, self.person, thr)


def decode_yolox(
    raw: F32, grid: F32, stride: F32, person_class: int, score_threshold: float
) -> tuple[F32, F32]:
    """Raw YOLOX head (A, 5 + C) → person boxes (M, 4) xyxy input px and scores (M,) above
    ``score_threshold``."""
    scores = raw[:, 4] * raw[:, 5 + person_class]
    idx = np.flatnonzero(scores > score_threshold)
    cand = raw[idx]
    s = stride[idx]
    cxy = (cand[:, :2] + grid[idx]) * s
    wh = np.exp(np.minimum(cand[:, 2:4], 20.0)) * s
    boxes = np.concatenate((cxy - wh / 2, cxy + wh / 2), axis=1).astype(np.float32)
    return boxes, scores[idx].astype(np.float32)


def _boxes_scores_decode(det: OnnxDetector) -> Decode:
    person = det.person_class

    def decode(outputs: list[F32], thr: float) -> tuple[F32, F32]:
        boxes, scores = outputs
        if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.ndim != 2:
            raise ModelError(
                f"detector {det.path.name}: expected boxes (1, A, 4) and scores (1, C, A), "
                f"got {(1, *boxes.shape)} and {(1, *scores.shape)}"
            )
        if scores.shape[1] != boxes.shape[0] or scores.shape[0] <= person:
            raise ModelError(
                f"detector {det.path.name}: expected scores (1, C > {person}, "
                f"{boxes.shape[0]}), got {(1, *scores.shape)}"
            )
        return decode_boxes_scores(boxes, scores, person, thr)

    return decode


def decode_boxes_scores(
    boxes: F32, scores: F32, person_class: int, score_threshold: float
) -> tuple[F32, F32]:
    """``boxes`` (A, 4) xyxy input px + ``scores`` (C, A) → person boxes (M, 4), scores (M,)
    above ``score_threshold``."""
    sc = scores[person_class]
    idx = np.flatnonzero(sc > score_threshold)
    return boxes[idx].astype(np.float32), sc[idx].astype(np.float32)


#: Output layout (``ModelCard.output_layout``) → how its outputs decode to boxes.
OUTPUT_LAYOUTS: dict[str, _Layout] = {
    "yolox": _Layout(("yolox",), _YoloxDecode),
    "boxes_scores": _Layout(("boxes", "scores"), _boxes_scores_decode),
}


class PicoDetDetector(OnnxDetector):
    """PicoDet (boxes + scores outputs, no NMS in the graph): an :class:`OnnxDetector` whose
    card is required (the shipped one for ``picodet_s_416_pedestrian.onnx``)."""

    kind = "picodet"


class YoloxDetector(OnnxDetector):
    """YOLOX person detector: an :class:`OnnxDetector` with the ``yolox`` output layout.

    The card is the file's (:mod:`darkpose.service.runtime.cards`) or, when it has none,
    :data:`YOLOX_CARD` with the graph's input size and name.
    """

    kind = "yolox"

    @classmethod
    def _card_of(cls, path: Path, card: ModelCard | None) -> ModelCard:
        """``card``, else the file's, else :data:`YOLOX_CARD` for the graph; its output layout
        must be ``yolox``."""
        if card is None:
            found = resolve_card(path, kind="detector")
            card = found.card if found is not None else None
        if card is None:
            logger.info("YOLOX %s: no model card, using the built-in YOLOX card", path.name)
            card = _yolox_card_for(path)
        if card.output_layout != "yolox":
            raise ModelError(
                f"YOLOX {path.name}: expected a card with the 'yolox' output layout, "
                f"got {card.output_layout!r}"
            )
        return card


def _yolox_card_for(path: str | Path) -> ModelCard:
    """:data:`YOLOX_CARD` with the input size and name of the graph at ``path``."""
    from darkpose.service.runtime.onnx import (
        graph_inputs,
        load_model,
        read_model_bytes,
        static_shape,
    )

    model = load_model(read_model_bytes(path))
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ModelError(f"YOLOX {Path(path).name}: expected 1 graph input, got {len(inputs)}")
    shape = static_shape(inputs[0])
    if len(shape) != 4 or not isinstance(shape[2], int) or not isinstance(shape[3], int):
        raise ModelError(f"YOLOX {Path(path).name}: expected input (1, 3, H, W), got {shape}")
    data = YOLOX_CARD.model_dump(by_alias=True)
    data["name"] = Path(path).stem
    data["input"]["size"] = [shape[3], shape[2]]
    return parse_card(data, f"YOLOX_CARD for {Path(path).name}")
