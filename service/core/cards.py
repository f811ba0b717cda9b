"""Model cards: one typed record per model file (pose models and detectors alike).

A card says everything pre- and post-processing need to know about a model, so that a new model
is data (an ONNX file + its card), not code:

* ``kind`` — ``pose`` (top-down keypoint network) or ``detector`` (person detector);
* ``input`` — tensor name, size ``(W, H)``, colour order, ``pixel_scale`` + mean/std
  (network input = ``(pixel * pixel_scale - mean) / std``), resize mode (``affine`` = the
  pipeline's top-down crop, ``letterbox`` = aspect-preserving resize pasted top-left on a canvas
  of ``pad_value``, ``stretch`` = plain resize to the input size);
* ``outputs`` — names and layout (``heatmaps`` (N, K, h, w) | ``keypoints`` (N, K, 3) decoded in
  the graph | ``yolox`` raw grid head (1, A, 5 + C) | ``boxes`` (1, A, 4) xyxy input px +
  ``scores`` (1, C, A));
* ``pose`` — heatmap size, keypoint names, flip pairs; ``codec`` — decode method, Gaussian sigma,
  DARK blur kernel, whether the decode is in the graph;
* ``detector`` — person class, anchor strides (``yolox``), NMS IoU;
* ``provenance`` — source, licence, notes; ``backend`` / ``precision`` — which runtime runs the
  file and at what precision (``onnxruntime`` / ``fp32`` unless the card says otherwise;
  ``openvino`` + ``bf16`` = float weights run in bfloat16; ``int8`` = a quantised QDQ file);
* ``quantization`` — for an int8 file made by ``darkpose quantize``: tool, calibration set,
  layers kept in float and the measured parity against the float model;
* ``sha256`` — optional: a card shipped for a file *name* applies only to the file with that hash.

Cards are JSON files validated by :class:`ModelCard` (``ModelCard.model_json_schema()`` is the
JSON schema; unknown keys are rejected).  Where a card comes from (ONNX ``metadata_props``, a
``<model>.card.json`` beside the file, or the cards packaged in ``darkpose/zoo/``) is decided
by :mod:`darkpose.service.runtime.cards`.  This module is pure (pydantic only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from darkpose.service.core.choices import (
    Backend,
    BlurKernel,
    ChannelOrder,
    DecodeMethod,
    FilePrecision,
)
from darkpose.service.core.errors import ModelError, describe_validation_errors
from darkpose.service.core.types import COCO_FLIP_PAIRS, COCO_KEYPOINTS, ModelSpec

CARD_SCHEMA_VERSION = 1
#: Suffix of a card file beside its model: ``model.onnx`` → ``model.card.json``.
CARD_SUFFIX = ".card.json"
#: ONNX ``metadata_props`` key holding a whole card as JSON (takes precedence over
#: the ``darkpose.*`` keys of :meth:`ModelSpec.to_metadata`).
CARD_METADATA_KEY = "darkpose.card"
#: The models and cards packaged with darkpose (``darkpose/zoo``, package data of the wheel):
#: the default model directory, and the cards looked up by file name for models elsewhere.
#: Not resolved: from a checkout the package is reached through ``darkpose/service`` (a link to
#: ``service/``), and the zoo sits beside that link.
ZOO_DIR = Path(__file__).parent.parent.parent / "zoo"

ModelKind = Literal["pose", "detector"]
ResizeMode = Literal["affine", "letterbox", "stretch"]
OutputLayout = Literal["heatmaps", "keypoints", "yolox", "boxes", "scores"]

Size = tuple[PositiveInt, PositiveInt]
Triple = tuple[float, float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputCard(_Strict):
    """The network input: ``(pixel * pixel_scale - mean) / std`` in ``channel_order``."""

    name: str | None = Field(None, description="graph input name (None = the only input)")
    size: Size = Field(description="(W, H) of the network input")
    channel_order: ChannelOrder = "RGB"
    pixel_scale: float = Field(1.0 / 255.0, gt=0.0)
    mean: Triple = (0.485, 0.456, 0.406)
    std: Triple = (0.229, 0.224, 0.225)
    resize: ResizeMode = "affine"
    pad_value: float = Field(0.0, description="letterbox canvas value, in raw 0-255 pixels")

    @model_validator(mode="after")
    def _std_positive(self) -> InputCard:
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std: expected values > 0, got {list(self.std)}")
        return self


class OutputCard(_Strict):
    name: str | None = Field(None, description="graph output name (None = by position)")
    layout: OutputLayout


class PoseCard(_Strict):
    heatmap_size: Size | None = Field(None, description="(W, H); None for in-graph decode")
    keypoint_names: tuple[str, ...] = COCO_KEYPOINTS
    flip_pairs: tuple[tuple[int, int], ...] = COCO_FLIP_PAIRS

    @model_validator(mode="after")
    def _pairs_in_range(self) -> PoseCard:
        k = len(self.keypoint_names)
        if k == 0:
            raise ValueError("keypoint_names: expected at least one keypoint, got none")
        bad = [p for p in self.flip_pairs if not (0 <= p[0] < k and 0 <= p[1] < k)]
        if bad:
            raise ValueError(f"flip_pairs: expected indices in [0, {k}), got {bad}")
        return self


class CodecCard(_Strict):
    method: DecodeMethod = Field(
        "dark", description="a decoder of darkpose.service.core.codec.DECODERS"
    )
    sigma: float = Field(2.0, gt=0.0, description="Gaussian sigma of the training targets")
    unbiased: bool = Field(True, description="sub-pixel (DARK) training targets")
    blur_kernel: BlurKernel = Field(11, description="DARK modulation kernel (odd)")
    in_graph: bool = Field(False, description="the graph outputs decoded keypoints (N, K, 3)")


class DetectorCard(_Strict):
    person_class: int = Field(0, ge=0, description="index of the person class")
    strides: tuple[int, ...] = Field((8, 16, 32), description="yolox grid strides")
    nms_iou: float | None = Field(None, gt=0.0, le=1.0, description="None = the setting")


class Provenance(_Strict):
    source: str = ""
    licence: str = "unknown"
    notes: str = ""


class QuantizationCard(_Strict):
    """How an int8 file was made and what it costs in accuracy (``darkpose quantize``)."""

    tool: str = Field(description="quantiser and version, e.g. 'nncf 3.4.0'")
    preset: str = ""
    source_model: str = Field("", description="the float model file it was made from")
    keep_float: tuple[str, ...] = Field((), description="layer groups left in float")
    float_nodes: int = Field(0, ge=0, description="nodes kept in float by name")
    float_op_types: tuple[str, ...] = ()
    quantized_nodes: int = Field(0, ge=0, description="QuantizeLinear nodes in the result")
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="annotation file, image ids, crops, box source"
    )
    parity: dict[str, Any] = Field(
        default_factory=dict,
        description="per image split: heatmap / keypoint max |d| vs float, keypoint AP of both",
    )


class ModelCard(_Strict):
    """One model file, described as data (see the module docstring)."""

    schema_version: int = Field(CARD_SCHEMA_VERSION, alias="schema", ge=1, le=CARD_SCHEMA_VERSION)
    kind: ModelKind
    name: str = Field(min_length=1)
    arch: str = ""
    file: str | None = Field(None, description="the model file name this card describes")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    backend: Backend = "onnxruntime"
    precision: FilePrecision = "fp32"
    input: InputCard
    outputs: tuple[OutputCard, ...] = Field(min_length=1)
    pose: PoseCard | None = None
    codec: CodecCard | None = None
    detector: DetectorCard | None = None
    provenance: Provenance = Provenance()
    quantization: QuantizationCard | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        layouts = [o.layout for o in self.outputs]
        if self.kind == "pose":
            if self.pose is None or self.codec is None:
                raise ValueError("a pose card: expected 'pose' and 'codec' sections, got none")
            want = "keypoints" if self.codec.in_graph else "heatmaps"
            if layouts != [want]:
                raise ValueError(
                    f"outputs: expected one {want!r} output for a pose model "
                    f"(codec.in_graph={self.codec.in_graph}), got {layouts}"
                )
            if not self.codec.in_graph and self.pose.heatmap_size is None:
                raise ValueError("pose.heatmap_size: expected (W, H) for a heatmap model, got none")
            if self.input.resize != "affine":
                raise ValueError(
                    f"input.resize: expected 'affine' for a top-down pose model, "
                    f"got {self.input.resize!r}"
                )
        else:
            if sorted(layouts) not in (["yolox"], ["boxes", "scores"]):
                raise ValueError(
                    f"outputs: expected ['yolox'] or ['boxes', 'scores'] for a detector, "
                    f"got {layouts}"
                )
            if self.input.resize == "affine":
                raise ValueError(
                    "input.resize: expected 'letterbox' or 'stretch' for a detector, got 'affine'"
                )
        return self

    # -- views ---------------------------------------------------------------------------------
    @property
    def detector_options(self) -> DetectorCard:
        """The ``detector`` section (its defaults when the card has none)."""
        return self.detector or DetectorCard.model_validate({})

    @property
    def output_layout(self) -> str:
        """``heatmaps`` | ``keypoints`` | ``yolox`` | ``boxes_scores``."""
        layouts = sorted(o.layout for o in self.outputs)
        return "boxes_scores" if layouts == ["boxes", "scores"] else layouts[0]

    def output_name(self, layout: str) -> str | None:
        """The graph output name of ``layout`` (None = by position)."""
        for o in self.outputs:
            if o.layout == layout:
                return o.name
        return None

    def to_spec(self) -> ModelSpec:
        """The :class:`ModelSpec` the pipeline uses (pose cards only)."""
        if self.kind != "pose" or self.pose is None or self.codec is None:
            raise ModelError(f"model card {self.name}: expected a pose card, got kind={self.kind}")
        return ModelSpec(
            name=self.name,
            arch=self.arch,
            input_size=self.input.size,
            heatmap_size=self.pose.heatmap_size or ModelSpec().heatmap_size,
            mean=self.input.mean,
            std=self.input.std,
            pixel_scale=self.input.pixel_scale,
            channel_order=self.input.channel_order,
            keypoint_names=self.pose.keypoint_names,
            flip_pairs=self.pose.flip_pairs,
            codec=self.codec.method,
            blur_kernel=self.codec.blur_kernel,
            decoded_output=self.codec.in_graph,
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec, **fields: Any) -> ModelCard:
        """A pose card for ``spec`` (e.g. from ``darkpose.*`` metadata); ``fields`` override."""
        data: dict[str, Any] = {
            "kind": "pose",
            "name": spec.name,
            "arch": spec.arch,
            "input": {
                "size": spec.input_size,
                "channel_order": spec.channel_order,
                "pixel_scale": spec.pixel_scale,
                "mean": spec.mean,
                "std": spec.std,
            },
            "outputs": [{"layout": "keypoints" if spec.decoded_output else "heatmaps"}],
            "pose": {
                "heatmap_size": spec.heatmap_size,
                "keypoint_names": spec.keypoint_names,
                "flip_pairs": spec.flip_pairs,
            },
            "codec": {
                "method": spec.codec,
                "blur_kernel": spec.blur_kernel,
                "in_graph": spec.decoded_output,
            },
        }
        data.update(fields)
        return parse_card(data, f"metadata of {spec.name}")

    @property
    def float_precision(self) -> str:
        """The float compute precision the card asks of the runtime: ``bf16`` for a bf16 card,
        else ``fp32`` (an int8 file's float ops and an fp16 file's graph run as written)."""
        return "bf16" if self.precision == "bf16" else "fp32"

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True) + "\n"


def parse_card(data: Any, where: str) -> ModelCard:
    """Validate ``data`` (a dict or JSON text) as a :class:`ModelCard`; :class:`ModelError`
    naming ``where`` and each bad field otherwise."""
    try:
        if isinstance(data, str | bytes):
            return ModelCard.model_validate_json(data)
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise ModelError(f"model card {where}: {describe_validation_errors(exc.errors())}") from exc


def read_card(path: str | Path) -> ModelCard:
    """The card in the JSON file ``path`` (:class:`ModelError` when unreadable or invalid)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"model card {p}: expected a readable JSON file, got {exc}") from exc
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model card {p}: expected JSON, got a syntax error ({exc})") from exc
    return parse_card(text, str(p))
