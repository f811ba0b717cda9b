"""Detector configuration strings: ``picodet | yolox | chips(picodet) | fused(picodet,yolox)``.

Grammar (whitespace is ignored)::

    expr    := atom [ "@" variant ]
    atom    := NAME [ "(" [ arg { "," arg } ] ")" ]
    arg     := KEY "=" VALUE | expr
    variant := <float> "x"          run on the image resized by that factor (yolox@2x)
             | "chips"              SNIPER chips with their defaults (yolox@chips == chips(yolox))

Detectors and their options (``KEY=VALUE``; lists separated by ``/``):

* ``picodet`` — the ONNX PicoDet of the settings (``DARKPOSE_PICODET_MODEL``); ``model=<file>``,
  ``score=<thr>``, ``nms=<iou>``.
* ``yolox`` — the ONNX YOLOX of the settings (``DARKPOSE_DETECTOR_MODEL``); same options.
* ``onnx`` — any ONNX detector with a model card (:mod:`darkpose.service.runtime.cards`):
  ``model=<file>`` (required), ``score=<thr>``, ``nms=<iou>``.
* ``htc`` — mmdet HTC (extra ``mmdet``); ``config=<file or shipped name>``,
  ``checkpoint=<.pth>``, ``scale=1333x800`` (or ``800``), ``device=cpu|cuda``, ``score=<thr>``,
  ``random=1`` (random weights: smoke tests only), ``trusted=1`` (unpickle checkpoint metadata).
  Defaults come from ``DARKPOSE_HTC_CONFIG``, ``DARKPOSE_HTC_CHECKPOINT``, ``DARKPOSE_HTC_SCALE``,
  ``DARKPOSE_HTC_DEVICE``.
* ``chips(<expr>)`` — :class:`~darkpose.service.runtime.chips.MultiScaleChipDetector`;
``scales=fit/2``,
  ``chip=512``, ``stride=384``, ``ranges=40:inf/0:120`` (one ``lo:hi`` per scale, sqrt of the
  box area in image px), ``nms=<iou>`` (default DARKPOSE_DET_NMS_IOU, 0.65), ``margin=2``.
* ``fused(<expr>, <expr>, ...)`` — :class:`~darkpose.service.runtime.fusion.FusedDetector` (weighted
  boxes fusion); ``weights=2/1/1``, ``iou=0.55``, ``skip=0``, ``conf=avg``.

Every detector kind is one entry of :data:`DETECTORS` (name → options, number of
sub-detectors, builder): adding a kind is a builder function plus one line there.  Leaves cap
their output at ``DARKPOSE_DET_MAX_DETECTIONS`` (the detector's own cap; a request's person cap is
``max_persons`` and applies afterwards, in the pipeline).  Every kind honours a per-call
``detect(image, score_threshold)``.

Syntax errors and unknown names/options raise :class:`InvalidParameter`; configurations that
parse but cannot be built (missing files, mmdet not installed) raise :class:`ModelError`.
Leaves that appear several times (``fused(yolox@1x,yolox@chips)``) share one instance.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.types import Detector
from darkpose.service.runtime.htc import DEFAULT_HTC_CONFIG
from darkpose.service.settings import Settings

if TYPE_CHECKING:
    from darkpose.service.runtime.detectors import OnnxDetector

logger = logging.getLogger(__name__)

_PUNCT = "(),=@"
_TOKEN = re.compile(r"[(),=@]|[^\s(),=@]+")


class HtcSettings(BaseSettings):
    """Defaults of the ``htc`` leaf (environment ``DARKPOSE_HTC_*``)."""

    model_config = SettingsConfigDict(env_prefix="DARKPOSE_HTC_", env_file=None, extra="ignore")

    config: str = DEFAULT_HTC_CONFIG
    checkpoint: str | None = None
    scale: str | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class DetectorSpec:
    """A parsed detector configuration (a tree)."""

    name: str
    children: tuple[DetectorSpec, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    variant: str | None = None

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    def __str__(self) -> str:
        args = [str(c) for c in self.children] + [f"{k}={v}" for k, v in self.options]
        text = self.name + (f"({','.join(args)})" if args else "")
        return text + (f"@{self.variant}" if self.variant else "")


@dataclass
class _Parser:
    text: str
    tokens: list[tuple[str, int]] = field(default_factory=list)
    pos: int = 0

    def __post_init__(self) -> None:
        # every non-space character starts a token, so the matches skip exactly the whitespace
        self.tokens = [(m.group(), m.start()) for m in _TOKEN.finditer(self.text)]

    def at(self) -> int:
        """Text position of the next token (the end of the text when there is none)."""
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else len(self.text)

    def error(self, expected: str, at: int | None = None) -> InvalidParameter:
        if at is None:
            at = self.at()
        got = self.text[at:].strip()[:30] or "end of text"
        return InvalidParameter(
            f"detector config {self.text!r}: expected {expected} at position {at}, got {got!r}"
        )

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.tokens[i][0] if i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.error("more text")
        self.pos += 1
        return tok

    def expect(self, tok: str) -> None:
        if self.peek() != tok:
            raise self.error(repr(tok))
        self.pos += 1

    def word(self, what: str) -> str:
        tok = self.peek()
        if tok is None or tok in _PUNCT:
            raise self.error(what)
        self.pos += 1
        return tok

    def parse(self) -> DetectorSpec:
        if not self.tokens:
            raise InvalidParameter(
                f"detector config: expected e.g. 'yolox' or 'fused(yolox,yolox@chips)', "
                f"got {self.text!r}"
            )
        spec = self.expr()
        if self.peek() is not None:
            raise self.error("end of the config")
        return spec

    def expr(self) -> DetectorSpec:
        start = self.at()
        name = self.word("a detector name").lower()
        if name not in DETECTORS:
            raise InvalidParameter(
                f"detector config {self.text!r}: expected a detector name (one of "
                f"{', '.join(DETECTORS)}) at position {start}, got {name!r}"
            )
        kind = DETECTORS[name]
        children: list[DetectorSpec] = []
        options: list[tuple[str, str]] = []
        if self.peek() == "(":
            self.take()
            while self.peek() != ")":
                if self.peek(1) == "=":
                    key_at = self.at()
                    key = self.word("an option name").lower()
                    self.expect("=")
                    value = self.word(f"a value for {key}")
                    if key not in kind.options:
                        raise InvalidParameter(
                            f"detector config {self.text!r}: expected an option of {name} "
                            f"({', '.join(kind.options)}) at position {key_at}, got {key!r}"
                        )
                    if any(k == key for k, _ in options):
                        raise self.error(f"{key} given once", key_at)
                    options.append((key, value))
                else:
                    children.append(self.expr())
                if self.peek() == ",":
                    self.take()
                elif self.peek() != ")":
                    raise self.error("',' or ')'")
            self.expect(")")
        variant = None
        if self.peek() == "@":
            self.take()
            variant = self.word("a variant (chips or <factor>x)").lower()
            if variant != "chips" and _parse_factor(variant) is None:
                raise InvalidParameter(
                    f"detector config {self.text!r}: expected a variant 'chips' or "
                    f"'<factor>x' (e.g. 2x) after '@', got {variant!r}"
                )
        spec = DetectorSpec(name, tuple(children), tuple(options), variant)
        lo, hi = kind.children
        if not (lo <= len(children) and (hi is None or len(children) <= hi)):
            want = (
                "no sub-detectors"
                if hi == 0
                else f"exactly {_count(lo)} detector"
                if lo == hi
                else f"at least {_count(lo)} detector"
            )
            raise InvalidParameter(
                f"detector config {self.text!r}: expected {want} in {name}(...), "
                f"got {len(children)}"
            )
        for key in kind.required:
            if spec.option(key) is None:
                raise InvalidParameter(
                    f"detector config {self.text!r}: expected option {key}=... in {name}(...), "
                    "got none"
                )
        return spec


def _count(n: int) -> str:
    return {1: "one", 2: "two"}.get(n, str(n))


def _parse_factor(variant: str) -> float | None:
    if not variant.endswith("x"):
        return None
    try:
        f = float(variant[:-1])
    except ValueError:
        return None
    return f if math.isfinite(f) and f > 0 else None


def parse_detector_config(text: str) -> DetectorSpec:
    """Parse a detector configuration string (grammar in the module docstring)."""
    if not isinstance(text, str):
        raise InvalidParameter(f"detector config: expected a string, got {type(text).__name__}")
    return _Parser(text).parse()


def split_configs(text: str) -> list[str]:
    """Split a comma-separated list of configs at nesting depth 0:
    ``"yolox,fused(yolox,htc)"`` → ``["yolox", "fused(yolox,htc)"]``."""
    out: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise InvalidParameter(
                    f"detector list: expected balanced parentheses, got {text!r}"
                )
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise InvalidParameter(f"detector list: expected balanced parentheses, got {text!r}")
    out.append(cur.strip())
    if any(not c for c in out):
        raise InvalidParameter(f"detector list: expected non-empty items, got {text!r}")
    return out


# ------------------------------------------------------------------------------- option values
def _num(spec: DetectorSpec, key: str, default: float, lo: float, hi: float) -> float:
    raw = spec.option(key)
    if raw is None:
        return default
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not (lo <= v <= hi):
        raise InvalidParameter(f"{spec.name} option {key}: expected a number in [{lo}, {hi}], "
                               f"got {raw!r}")  # fmt: skip
    return v


def _int(spec: DetectorSpec, key: str, default: int, lo: int, hi: int) -> int:
    raw = spec.option(key)
    if raw is None:
        return default
    if not re.fullmatch(r"\d+", raw) or not lo <= int(raw) <= hi:
        raise InvalidParameter(
            f"{spec.name} option {key}: expected an integer in [{lo}, {hi}], got {raw!r}"
        )
    return int(raw)


def _flag(spec: DetectorSpec, key: str) -> bool:
    raw = (spec.option(key) or "0").lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise InvalidParameter(f"{spec.name} option {key}: expected 0 or 1, got {raw!r}")
    return raw in ("1", "true", "yes", "on")


def _scales(spec: DetectorSpec) -> tuple[float | Literal["fit"], ...] | None:
    raw = spec.option("scales")
    if raw is None:
        return None
    out: list[float | Literal["fit"]] = []
    for part in raw.split("/"):
        part = part.strip().lower()
        if part == "fit":
            out.append("fit")
            continue
        f = _parse_factor(part if part.endswith("x") else part + "x")
        if f is None:
            raise InvalidParameter(
                f"chips option scales: expected factors or 'fit' separated by '/', got {raw!r}"
            )
        out.append(f)
    return tuple(out)


def _ranges(spec: DetectorSpec) -> tuple[tuple[float, float], ...] | None:
    raw = spec.option("ranges")
    if raw is None:
        return None
    out = []
    for part in raw.split("/"):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError as exc:
            raise InvalidParameter(
                f"chips option ranges: expected lo:hi pairs separated by '/', got {raw!r}"
            ) from exc
        out.append((lo, hi))
    return tuple(out)


def _weights(spec: DetectorSpec) -> list[float] | None:
    raw = spec.option("weights")
    if raw is None:
        return None
    try:
        return [float(v) for v in raw.split("/")]
    except ValueError as exc:
        raise InvalidParameter(
            f"fused option weights: expected numbers separated by '/', got {raw!r}"
        ) from exc


# ------------------------------------------------------------------------------------ building
class _Builder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache: dict[str, Detector] = {}

    def build(self, spec: DetectorSpec) -> Detector:
        key = str(spec)
        if key not in self.cache:
            self.cache[key] = self._build(spec)
        return self.cache[key]

    def _build(self, spec: DetectorSpec) -> Detector:
        if spec.variant is not None:
            inner = self.build(DetectorSpec(spec.name, spec.children, spec.options))
            if spec.variant == "chips":
                return self.chips(inner, DetectorSpec("chips", (), ()))
            factor = _parse_factor(spec.variant)
            if factor is None:
                raise InvalidParameter(
                    f"detector variant: expected <factor>x, got {spec.variant!r}"
                )
            if factor == 1.0:
                return inner
            from darkpose.service.runtime.chips import ScaledDetector

            return ScaledDetector(inner, factor)
        return DETECTORS[spec.name].build(self, spec)

    def onnx_leaf(
        self, spec: DetectorSpec, cls: type[OnnxDetector], default_model: str
    ) -> Detector:
        s = self.settings
        path = existing_model_file(f"{spec.name} model", spec.option("model") or default_model, s)
        nms = spec.option("nms")
        return cls(
            path,
            score_threshold=_num(spec, "score", s.det_score_threshold, 0.0, 1.0),
            nms_iou=None if nms is None else _num(spec, "nms", s.det_nms_iou, 1e-6, 1.0),
            max_detections=s.det_max_detections,
            pre_nms_topk=s.det_pre_nms_topk,
            providers=s.providers,
            intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
            backend=s.detector_backend,
            precision=s.detector_precision,
            default_nms_iou=s.det_nms_iou,
        )

    def yolox(self, spec: DetectorSpec) -> Detector:
        from darkpose.service.runtime.detectors import YoloxDetector

        return self.onnx_leaf(spec, YoloxDetector, self.settings.detector_model)

    def picodet(self, spec: DetectorSpec) -> Detector:
        from darkpose.service.runtime.detectors import PicoDetDetector

        return self.onnx_leaf(spec, PicoDetDetector, self.settings.picodet_model)

    def onnx(self, spec: DetectorSpec) -> Detector:
        from darkpose.service.runtime.detectors import OnnxDetector

        return self.onnx_leaf(spec, OnnxDetector, spec.option("model") or "")

    def htc(self, spec: DetectorSpec) -> Detector:
        from darkpose.service.runtime.htc import HtcDetector, parse_test_scale

        d = HtcSettings()
        scale = spec.option("scale", d.scale)
        checkpoint = spec.option("checkpoint", d.checkpoint)
        return HtcDetector(
            spec.option("config", d.config) or d.config,
            None if checkpoint is None else self.settings.resolve_model(checkpoint),
            random_weights=_flag(spec, "random"),
            trusted_checkpoint=_flag(spec, "trusted"),
            score_threshold=_num(spec, "score", self.settings.det_score_threshold, 0.0, 1.0),
            max_detections=self.settings.det_max_detections,
            device=spec.option("device", d.device) or "cpu",
            test_scale=None if scale is None else parse_test_scale(scale),
            num_threads=self.settings.intra_op_threads,
        )

    def chips(self, inner: Detector, spec: DetectorSpec) -> Detector:
        from darkpose.service.runtime import chips as ch

        return ch.MultiScaleChipDetector(
            inner,
            scales=_scales(spec) or ch.DEFAULT_SCALES,
            valid_ranges=_ranges(spec),
            chip_size=_int(spec, "chip", ch.DEFAULT_CHIP_SIZE, 32, 4096),
            stride=_int(spec, "stride", ch.DEFAULT_STRIDE, 1, 4096),
            nms_iou=_num(spec, "nms", self.settings.det_nms_iou, 1e-6, 1.0),
            border_margin=_num(spec, "margin", 2.0, 0.0, 64.0),
            max_detections=self.settings.det_max_detections,
        )

    def fused(self, spec: DetectorSpec) -> Detector:
        from darkpose.service.runtime.fusion import FusedDetector

        return FusedDetector(
            [self.build(c) for c in spec.children],
            weights=_weights(spec),
            iou_thr=_num(spec, "iou", 0.55, 1e-6, 1.0),
            skip_box_thr=_num(spec, "skip", 0.0, 0.0, 1.0),
            conf_type=spec.option("conf", "avg") or "avg",
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


def detector_model_files(
    config: str | DetectorSpec, settings: Settings
) -> list[tuple[str, Path, bool]]:
    """The ONNX files the detector ``config`` loads, without loading them: (what, path,
    whether the detector needs a model card for it).  ``ModelError`` for a missing file."""
    spec = parse_detector_config(config) if isinstance(config, str) else config
    out: list[tuple[str, Path, bool]] = []
    if spec.name in _ONNX_LEAVES:
        default_field, needs_card = _ONNX_LEAVES[spec.name]
        default = "" if default_field is None else str(getattr(settings, default_field))
        name = spec.option("model") or default
        out.append(
            (
                f"{spec.name} model",
                existing_model_file(f"{spec.name} model", name, settings),
                needs_card,
            )
        )
    for child in spec.children:
        out.extend(detector_model_files(child, settings))
    return out


def build_detector_from_config(config: str | DetectorSpec, settings: Settings) -> Detector:
    """The :class:`~darkpose.service.core.types.Detector` described by ``config`` (a string in the
    grammar of this module, or a parsed :class:`DetectorSpec`), built with ``settings``
    (model paths, providers, thresholds, ``det_max_detections``)."""
    spec = parse_detector_config(config) if isinstance(config, str) else config
    detector = _Builder(settings).build(spec)
    logger.info("detector: %s → %r", spec, detector)
    return detector


@dataclass(frozen=True)
class DetectorKind:
    """One detector kind of the config grammar: its ``KEY=VALUE`` options (``required`` ones
    must be given), how many sub-detectors it takes (min, max; ``None`` = unbounded) and its
    builder ``(builder, spec) -> Detector``."""

    options: tuple[str, ...]
    build: Callable[[_Builder, DetectorSpec], Detector]
    children: tuple[int, int | None] = (0, 0)
    required: tuple[str, ...] = ()
    help: str = ""


_ONNX_OPTIONS = ("model", "score", "nms")
#: ONNX detector kinds → (the setting naming their default file, ``None``: ``model=`` only;
#: whether the file needs a model card: YOLOX has a built-in one).
_ONNX_LEAVES: dict[str, tuple[str | None, bool]] = {
    "yolox": ("detector_model", False),
    "picodet": ("picodet_model", True),
    "onnx": (None, True),
}

#: The detector table: name → options, sub-detectors, builder (parser and builder read it).
DETECTORS: dict[str, DetectorKind] = {
    "picodet": DetectorKind(_ONNX_OPTIONS, _Builder.picodet, help="PicoDet ONNX (card-driven)"),
    "yolox": DetectorKind(_ONNX_OPTIONS, _Builder.yolox, help="YOLOX ONNX (raw grid head)"),
    "onnx": DetectorKind(
        _ONNX_OPTIONS, _Builder.onnx, required=("model",), help="any ONNX detector with a card"
    ),
    "htc": DetectorKind(
        ("config", "checkpoint", "scale", "device", "score", "random", "trusted"),
        _Builder.htc,
        help="mmdet HTC (extra mmdet)",
    ),
    "chips": DetectorKind(
        ("scales", "chip", "stride", "ranges", "nms", "margin"),
        lambda b, s: b.chips(b.build(s.children[0]), s),
        children=(1, 1),
        help="SNIPER chips around one detector",
    ),
    "fused": DetectorKind(
        ("weights", "iou", "skip", "conf"),
        _Builder.fused,
        children=(1, None),
        help="weighted boxes fusion of several detectors",
    ),
}
#: Detector names (the keys of :data:`DETECTORS`).
NAMES: tuple[str, ...] = tuple(DETECTORS)
