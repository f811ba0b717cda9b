"""Shared value types and backend protocols.

Coordinates everywhere are continuous pixel coordinates with **pixel centres at integer
positions** (pixel ``(0, 0)`` covers ``[-0.5, 0.5) x [-0.5, 0.5)``), in the image and in the
heatmap.  Boxes are ``xyxy`` float32 in image pixels unless a name says ``xywh``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from darkpose.service.core.choices import CHANNEL_ORDERS, ChannelOrder, DecodeMethod
from darkpose.service.core.codec import check_decode_method
from darkpose.service.core.errors import ModelError

F32 = npt.NDArray[np.float32]

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)  # fmt: skip
#: Per-keypoint OKS sigmas from the COCO keypoint evaluation (cocoeval.py).
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
#: Skeleton edges (0-based keypoint indices) for drawing.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """Everything preprocessing/decoding needs to know about a pose model.

    Read from ONNX ``metadata_props`` (keys ``darkpose.*``, see :meth:`to_metadata`) when the
    file has them, otherwise from defaults (the shared SimpleBaseline model's values).

    ``input_size`` and ``heatmap_size`` are ``(W, H)``.  Pixel values fed to the network are
    ``(pixel * pixel_scale - mean) / std`` in ``channel_order``.
    """

    name: str = "pose"
    arch: str = "simplebaseline"
    input_size: tuple[int, int] = (192, 256)
    heatmap_size: tuple[int, int] = (48, 64)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pixel_scale: float = 1.0 / 255.0
    channel_order: ChannelOrder = "RGB"
    keypoint_names: tuple[str, ...] = COCO_KEYPOINTS
    flip_pairs: tuple[tuple[int, int], ...] = COCO_FLIP_PAIRS
    codec: DecodeMethod = "dark"
    blur_kernel: int = 11
    #: True when the graph already contains the decode and outputs keypoints (N, K, 3).
    decoded_output: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def aspect_ratio(self) -> float:
        """Width / height of the network input."""
        return self.input_size[0] / self.input_size[1]

    def to_metadata(self) -> dict[str, str]:
        """Serialise to ONNX ``metadata_props`` (string → string)."""
        return {
            "darkpose.name": self.name,
            "darkpose.arch": self.arch,
            "darkpose.input_size": json.dumps(list(self.input_size)),
            "darkpose.heatmap_size": json.dumps(list(self.heatmap_size)),
            "darkpose.mean": json.dumps(list(self.mean)),
            "darkpose.std": json.dumps(list(self.std)),
            "darkpose.pixel_scale": repr(float(self.pixel_scale)),
            "darkpose.channel_order": self.channel_order,
            "darkpose.keypoint_names": json.dumps(list(self.keypoint_names)),
            "darkpose.flip_pairs": json.dumps([list(p) for p in self.flip_pairs]),
            "darkpose.codec": self.codec,
            "darkpose.blur_kernel": str(self.blur_kernel),
            "darkpose.decoded_output": "1" if self.decoded_output else "0",
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], **defaults: Any) -> ModelSpec:
        """Build from ONNX ``metadata_props``; missing keys fall back to ``defaults``/class
        defaults.  Raises :class:`ModelError` naming the key on malformed values."""
        base = cls(**defaults)

        def get(key: str, conv: Any, current: Any) -> Any:
            raw = meta.get("darkpose." + key)
            if raw is None:
                return current
            try:
                return conv(raw)
            except (ValueError, TypeError) as exc:
                raise ModelError(
                    f"model metadata darkpose.{key}: expected {conv.__name__}-compatible "
                    f"value, got {raw!r} ({exc})"
                ) from exc

        def pair(raw: str) -> tuple[int, int]:
            v = json.loads(raw)
            if not (isinstance(v, list) and len(v) == 2):
                raise ValueError("expected [W, H]")
            return (int(v[0]), int(v[1]))

        def triple(raw: str) -> tuple[float, float, float]:
            v = json.loads(raw)
            if not (isinstance(v, list) and len(v) == 3):
                raise ValueError("expected 3 numbers")
            return (float(v[0]), float(v[1]), float(v[2]))

        def names(raw: str) -> tuple[str, ...]:
            return tuple(str(s) for s in json.loads(raw))

        def pairs(raw: str) -> tuple[tuple[int, int], ...]:
            return tuple((int(a), int(b)) for a, b in json.loads(raw))

        def order(raw: str) -> str:
            if raw not in CHANNEL_ORDERS:
                raise ValueError(f"expected one of {', '.join(CHANNEL_ORDERS)}")
            return raw

        def method(raw: str) -> str:
            return check_decode_method(raw, "darkpose.codec")

        spec = cls(
            name=str(get("name", str, base.name)),
            arch=str(get("arch", str, base.arch)),
            input_size=get("input_size", pair, base.input_size),
            heatmap_size=get("heatmap_size", pair, base.heatmap_size),
            mean=get("mean", triple, base.mean),
            std=get("std", triple, base.std),
            pixel_scale=float(get("pixel_scale", float, base.pixel_scale)),
            channel_order=get("channel_order", order, base.channel_order),
            keypoint_names=get("keypoint_names", names, base.keypoint_names),
            flip_pairs=get("flip_pairs", pairs, base.flip_pairs),
            codec=get("codec", method, base.codec),
            blur_kernel=int(get("blur_kernel", int, base.blur_kernel)),
            decoded_output=get("decoded_output", lambda raw: raw == "1", base.decoded_output),
            extra={k: v for k, v in meta.items() if not k.startswith("darkpose.")},
        )
        return spec


@dataclass(frozen=True)
class Detections:
    """Person detections of one image.

    boxes: (M, 4) float32 xyxy in image pixels; scores: (M,) float32 in [0, 1].
    """

    boxes: F32
    scores: F32

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@runtime_checkable
class Detector(Protocol):
    """Anything that finds persons in a BGR uint8 image (H, W, 3).

    ``detect(image, score_threshold=None)``: boxes scoring below ``score_threshold`` are
    dropped (``None`` = the detector's own threshold); composite detectors (chips, fused,
    scaled) pass it down to the detectors they run.
    """

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections: ...


@runtime_checkable
class PoseModel(Protocol):
    """A top-down pose network.

    ``infer(batch)``: ``batch`` (N, 3, H, W) float32, already normalised per ``spec``;
    returns heatmaps (N, K, h, w) float32 (or, when ``spec.decoded_output``, keypoints
    (N, K, 3) float32 as x, y (heatmap px), score).  N may be 0.
    """

    spec: ModelSpec

    def infer(self, batch: F32) -> F32: ...
