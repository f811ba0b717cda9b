"""Detector configuration: a typed tree (``picodet | yolox | onnx | htc | chips | fused``).

A configuration is a :data:`DetectorConfig`: a pydantic discriminated union on ``kind``, so it
can be given as JSON (``{"kind": "fused", "detectors": [{"kind": "picodet"}, {"kind": "yolox",
"variant": 2}]}``) or in the short text form, which parses into the same tree::

    expr    := NAME [ "(" [ arg { "," arg } ] ")" ] [ "@" variant ]
    arg     := KEY "=" VALUE | expr              (whitespace is ignored; lists use "/")
    variant := <factor> ["x"] run on the image resized by that factor (yolox@2x, yolox@2)
             | "chips"        SNIPER chips with their defaults (yolox@chips == chips(yolox))

Kinds and options (the fields of each model below):

* ``picodet`` / ``yolox`` — the ONNX PicoDet / YOLOX of the settings (``DARKPOSE_PICODET_MODEL``,
  ``DARKPOSE_DETECTOR_MODEL``); ``model=<file>``, ``score=<thr>``, ``nms=<iou>``.
* ``onnx`` — any ONNX detector with a model card: ``model=<file>`` (required), ``score``, ``nms``.
* ``htc`` — mmdet HTC (extra ``mmdet``): ``config``, ``checkpoint``, ``scale=1333x800`` (or
  ``800``), ``device=cpu|cuda``, ``score``, ``random=1`` (random weights: smoke tests only),
  ``trusted=1`` (unpickle checkpoint metadata); defaults from ``DARKPOSE_HTC_*``.
* ``chips(<expr>)`` — :class:`~darkpose.service.runtime.chips.MultiScaleChipDetector`:
  ``scales=fit/2``, ``chip=512``, ``stride=384``, ``ranges=40:inf/0:120`` (one ``lo:hi`` per
  scale, sqrt of the box area in image px), ``nms=<iou>`` (default ``DARKPOSE_DET_NMS_IOU``),
  ``margin=2``.
* ``fused(<expr>, ...)`` — :class:`~darkpose.service.runtime.fusion.FusedDetector` (weighted boxes
  fusion): ``weights=2/1``, ``iou=0.55``, ``skip=0``, ``conf=avg``.

Leaves cap their output at ``DARKPOSE_DET_MAX_DETECTIONS``; every kind honours a per-call
``detect(image, score_threshold)``.  Syntax errors, unknown names/options and bad values raise
:class:`InvalidParameter`.  :mod:`darkpose.service.runtime.detector_build` builds the detector
a tree describes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from darkpose.service.core.choices import IoU, Probability
from darkpose.service.core.errors import InvalidParameter, describe_validation_errors
from darkpose.service.runtime import chips as ch
from darkpose.service.runtime.htc import DEFAULT_HTC_CONFIG


class HtcSettings(BaseSettings):
    """Defaults of the ``htc`` leaf (environment ``DARKPOSE_HTC_*``)."""

    model_config = SettingsConfigDict(env_prefix="DARKPOSE_HTC_", env_file=None, extra="ignore")

    config: str = DEFAULT_HTC_CONFIG
    checkpoint: str | None = None
    scale: str | None = None
    device: str = "cpu"


# ------------------------------------------------------------------------------ option values
def _factor(value: Any) -> Any:
    """``"2x"`` / ``"2"`` → ``2.0`` (other values unchanged, for pydantic to check)."""
    return value[:-1] if isinstance(value, str) and value.lower().endswith("x") else value


def _slashed(value: Any) -> Any:
    """``"a/b/c"`` → ``["a", "b", "c"]`` (the text form of a list option)."""
    return value.split("/") if isinstance(value, str) else value


def _ranges(value: Any) -> Any:
    """``"40:inf/0:120"`` → ``[["40", "inf"], ["0", "120"]]``."""
    return [p.split(":") for p in value.split("/")] if isinstance(value, str) else value


Factor = Annotated[PositiveFloat, Field(allow_inf_nan=False), BeforeValidator(_factor)]
Variant = Literal["chips"] | Factor
Scales = Annotated[tuple[Literal["fit"] | Factor, ...], BeforeValidator(_slashed)]
Ranges = Annotated[tuple[tuple[float, float], ...], BeforeValidator(_ranges)]
Weights = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], BeforeValidator(_slashed)]


def _text(value: Any) -> str:
    """An option value in the text form (the inverse of the validators above)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple | list):  # scales, weights: a/b; ranges: lo:hi/lo:hi
        return "/".join(
            ":".join(map(_text, v)) if isinstance(v, tuple | list) else _text(v) for v in value
        )
    return str(value)


# ------------------------------------------------------------------------------ the typed tree
class _Node(BaseModel):
    """Fields shared by every kind; subclasses add their options."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")

    #: (min, max) sub-detectors (``None`` = unbounded) and the field holding them.
    arity: ClassVar[tuple[int, int | None]] = (0, 0)
    children_field: ClassVar[str | None] = None
    help: ClassVar[str] = ""

    kind: str
    variant: Variant | None = Field(
        None, description="'chips' (chips around it) or a factor the image is resized by first"
    )

    @property
    def children(self) -> tuple[DetectorConfig, ...]:
        if self.children_field is None:
            return ()
        value = getattr(self, self.children_field)
        return tuple(value) if isinstance(value, list | tuple) else (value,)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The ``KEY=VALUE`` options of this kind (its fields but the structural ones)."""
        skip = {"kind", "variant", cls.children_field}
        return tuple(n for n in cls.model_fields if n not in skip)

    def __str__(self) -> str:
        """The text form (parses back into an equal tree)."""
        options = self.model_dump(exclude_defaults=True, include=set(self.option_names()))
        args = [str(c) for c in self.children]
        args += [f"{k}={_text(getattr(self, k))}" for k in self.option_names() if k in options]
        text = str(self.kind) + (f"({','.join(args)})" if args else "")
        return text + ("" if self.variant is None else "@" + _variant_text(self.variant))

    def without_variant(self) -> _Node:
        return self.model_copy(update={"variant": None})


def _variant_text(variant: Variant) -> str:
    return "chips" if variant == "chips" else f"{_text(variant)}x"


class OnnxLeafConfig(_Node):
    model: str | None = Field(None, description="ONNX file (relative to model_dir)")
    score: Probability | None = Field(None, description="score threshold (None = setting)")
    nms: IoU | None = Field(None, description="NMS IoU (None = card, else setting)")


class PicoDetConfig(OnnxLeafConfig):
    kind: Literal["picodet"] = "picodet"
    help: ClassVar[str] = "PicoDet ONNX (card-driven)"


class YoloxConfig(OnnxLeafConfig):
    kind: Literal["yolox"] = "yolox"
    help: ClassVar[str] = "YOLOX ONNX (raw grid head)"


class OnnxConfig(OnnxLeafConfig):
    kind: Literal["onnx"] = "onnx"
    model: str = Field(description="ONNX file with a model card (required)")  # type: ignore[assignment]
    help: ClassVar[str] = "any ONNX detector with a card"


class HtcConfig(_Node):
    kind: Literal["htc"] = "htc"
    help: ClassVar[str] = "mmdet HTC (extra mmdet)"

    config: str | None = Field(None, description="mmdet config file or shipped name")
    checkpoint: str | None = Field(None, description=".pth checkpoint")
    scale: str | None = Field(None, description="test scale: 1333x800 or a short side 800")
    device: str | None = Field(None, description="cpu | cuda")
    score: Probability | None = None
    random: bool = Field(False, description="random weights (smoke tests only)")
    trusted: bool = Field(False, description="unpickle the checkpoint's metadata")


class ChipsConfig(_Node):
    kind: Literal["chips"] = "chips"
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    children_field: ClassVar[str | None] = "detector"
    help: ClassVar[str] = "SNIPER chips around one detector"

    detector: DetectorConfig
    scales: Scales = ch.DEFAULT_SCALES
    chip: int = Field(ch.DEFAULT_CHIP_SIZE, ge=32, le=4096)
    stride: int = Field(ch.DEFAULT_STRIDE, ge=1, le=4096)
    ranges: Ranges | None = Field(None, description="lo:hi per scale (None = the defaults)")
    nms: IoU | None = Field(None, description="None = DARKPOSE_DET_NMS_IOU")
    margin: float = Field(2.0, ge=0.0, le=64.0)


class FusedConfig(_Node):
    kind: Literal["fused"] = "fused"
    arity: ClassVar[tuple[int, int | None]] = (1, None)
    children_field: ClassVar[str | None] = "detectors"
    help: ClassVar[str] = "weighted boxes fusion of several detectors"

    detectors: list[DetectorConfig] = Field(min_length=1)
    weights: Weights | None = None
    iou: IoU = 0.55
    skip: Probability = 0.0
    conf: str = Field("avg", description="WBF score rule (fusion.CONF_TYPES)")


def _kind_of(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)


#: A detector configuration: one of the kinds, told apart by ``kind``.
DetectorConfig = Annotated[
    Annotated[PicoDetConfig, Tag("picodet")]
    | Annotated[YoloxConfig, Tag("yolox")]
    | Annotated[OnnxConfig, Tag("onnx")]
    | Annotated[HtcConfig, Tag("htc")]
    | Annotated[ChipsConfig, Tag("chips")]
    | Annotated[FusedConfig, Tag("fused")],
    Discriminator(
        _kind_of,
        custom_error_type="detector_kind",
        custom_error_message="expected a 'kind' among picodet, yolox, onnx, htc, chips, fused",
    ),
]
ChipsConfig.model_rebuild()
FusedConfig.model_rebuild()

_ADAPTER: TypeAdapter[DetectorConfig] = TypeAdapter(DetectorConfig)
#: Every kind by name (the parser and the docs read it).
DETECTORS: dict[str, type[_Node]] = {
    cls.model_fields["kind"].default: cls
    for cls in (PicoDetConfig, YoloxConfig, OnnxConfig, HtcConfig, ChipsConfig, FusedConfig)
}
#: Detector names (the keys of :data:`DETECTORS`).
NAMES: tuple[str, ...] = tuple(DETECTORS)


# ------------------------------------------------------------------------------ the text form
_TOKEN = re.compile(r"[(),=@]|[^\s(),=@]+")


class _Syntax:
    """The text form → the plain dict that :data:`DetectorConfig` validates."""

    def __init__(self, text: str) -> None:
        self.text = text
        # every non-space character starts a token, so the matches skip exactly the whitespace
        self.tokens = [(m.group(), m.start()) for m in _TOKEN.finditer(text)]
        self.pos = 0

    def fail(
        self, expected: str, at: int | None = None, got: str | None = None
    ) -> InvalidParameter:
        at = self.at() if at is None else at
        shown = got if got is not None else repr(self.text[at:].strip()[:30] or "end of text")
        return InvalidParameter(
            f"detector config {self.text!r}: expected {expected} at position {at}, got {shown}"
        )

    def at(self) -> int:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else len(self.text)

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.tokens[i][0] if i < len(self.tokens) else None

    def word(self, what: str) -> str:
        tok = self.peek()
        if tok is None or tok in "(),=@":
            raise self.fail(what)
        self.pos += 1
        return tok

    def expect(self, tok: str) -> None:
        if self.peek() != tok:
            raise self.fail(repr(tok))
        self.pos += 1

    def parse(self) -> dict[str, Any]:
        if not self.tokens:
            raise InvalidParameter(
                f"detector config: expected e.g. 'yolox' or 'fused(yolox,yolox@chips)', "
                f"got {self.text!r}"
            )
        tree = self.expr()
        if self.peek() is not None:
            raise self.fail("end of the config")
        return tree

    def expr(self) -> dict[str, Any]:
        start = self.at()
        name = self.word("a detector name").lower()
        kind = DETECTORS.get(name)
        if kind is None:
            raise self.fail(f"a detector name (one of {', '.join(DETECTORS)})", start, repr(name))
        tree: dict[str, Any] = {"kind": name}
        children: list[dict[str, Any]] = []
        if self.peek() == "(":
            self.pos += 1
            while self.peek() != ")":
                if self.peek(1) == "=":
                    key_at = self.at()
                    key = self.word("an option name").lower()
                    self.expect("=")
                    value = self.word(f"a value for {key}")
                    if key not in kind.option_names():
                        options = ", ".join(kind.option_names())
                        raise self.fail(f"an option of {name} ({options})", key_at, repr(key))
                    if key in tree:
                        raise self.fail(f"{key} given once", key_at)
                    tree[key] = value
                else:
                    children.append(self.expr())
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != ")":
                    raise self.fail("',' or ')'")
            self.expect(")")
        if self.peek() == "@":
            self.pos += 1
            tree["variant"] = self.word("a variant (chips or <factor>[x])").lower()
            if tree["variant"] != "chips" and not _is_factor(tree["variant"]):
                raise InvalidParameter(
                    f"detector config {self.text!r}: expected a variant 'chips' or a "
                    f"factor > 0 ('2' or '2x') after '@', got {tree['variant']!r}"
                )
        self.place_children(kind, name, tree, children)
        return tree

    def place_children(
        self, kind: type[_Node], name: str, tree: dict[str, Any], children: list[Any]
    ) -> None:
        lo, hi = kind.arity
        if not (lo <= len(children) and (hi is None or len(children) <= hi)):
            count = {1: "one", 2: "two"}.get(lo, str(lo))
            want = (
                "no sub-detectors"
                if hi == 0
                else f"exactly {count} detector"
                if lo == hi
                else f"at least {count} detector"
            )
            raise InvalidParameter(
                f"detector config {self.text!r}: expected {want} in {name}(...), "
                f"got {len(children)}"
            )
        if kind.children_field is not None:
            tree[kind.children_field] = children[0] if hi == 1 else children
        for key in kind.option_names():
            if kind.model_fields[key].is_required() and key not in tree:
                raise InvalidParameter(
                    f"detector config {self.text!r}: expected option {key}=... in {name}(...), "
                    "got none"
                )


def _is_factor(text: str) -> bool:
    try:
        f = float(text.removesuffix("x"))
    except ValueError:
        return False
    return math.isfinite(f) and f > 0


def _where(loc: Any) -> str:
    """A validation error's place, without pydantic's names of union members."""
    return ".".join(str(p) for p in loc if not re.search(r"[\[(]", str(p))) or "config"


def parse_detector_config(config: str | Mapping[str, Any] | _Node) -> DetectorConfig:
    """The typed tree of ``config``: the text form (grammar in the module docstring), JSON text
    (``{"kind": ...}``) or an already parsed / plain-dict tree."""
    if isinstance(config, _Node):
        return config  # type: ignore[return-value]
    shown = config if isinstance(config, str) else "(json)"
    try:
        if isinstance(config, str) and config.lstrip().startswith("{"):
            return _ADAPTER.validate_json(config)
        if isinstance(config, str):
            return _ADAPTER.validate_python(_Syntax(config).parse())
        if isinstance(config, Mapping):
            return _ADAPTER.validate_python(config)
    except ValidationError as exc:
        errors = describe_validation_errors(exc.errors(), _where)
        raise InvalidParameter(f"detector config {shown!r}: {errors}") from None
    raise InvalidParameter(
        f"detector config: expected a string or a mapping, got {type(config).__name__}"
    )


def split_configs(text: str) -> list[str]:
    """Split a comma-separated list of configs at nesting depth 0:
    ``"yolox,fused(yolox,htc)"`` → ``["yolox", "fused(yolox,htc)"]``."""
    out, depth, cur = [], 0, ""
    for ch_ in text:
        depth += {"(": 1, ")": -1}.get(ch_, 0)
        if depth < 0:
            break
        if ch_ == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch_
    if depth != 0:
        raise InvalidParameter(f"detector list: expected balanced parentheses, got {text!r}")
    out.append(cur.strip())
    if any(not c for c in out):
        raise InvalidParameter(f"detector list: expected non-empty items, got {text!r}")
    return out
