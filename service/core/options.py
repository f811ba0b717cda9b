"""Pipeline options: the per-call knobs of :class:`~darkpose.service.core.pipeline.Pipeline`,
one pydantic model.

Each knob is defined here once — type and range (:mod:`darkpose.service.core.choices`), default
and description. :class:`darkpose.service.settings.Settings` holds one of these
(``Settings.pipeline``) and reads each knob from the environment under its setting name
(:data:`SETTING_NAMES`: ``DARKPOSE_FLIP``, ``DARKPOSE_DEFAULT_MAX_PERSONS``, ...); ``serve
--help``, the configuration reference, the HTTP query and the Ray app read the same fields.
``flip`` and ``det_score_threshold`` default to the default profile's values
(:mod:`darkpose.service.core.profiles`).

Built in Python (``PipelineOptions(flip=True)``, :meth:`PipelineOptions.replace`), values are
checked strictly (no string → number coercion) and a bad one raises
:class:`~darkpose.service.core.errors.InvalidParameter` ("expected X, got Y"); read from the
environment (inside ``Settings``), text is converted as pydantic does for settings.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from darkpose.service.core.choices import (
    BlurKernel,
    BoxPadding,
    DecodeMethod,
    OksThreshold,
    PersonCount,
    Probability,
    SoftNmsSigma,
    TestPaddings,
)
from darkpose.service.core.errors import InvalidParameter, describe_validation_errors
from darkpose.service.core.profiles import default_profile_value

__all__ = ["SETTING_NAMES", "PipelineOptions", "given"]


class PipelineOptions(BaseModel):
    """How persons are found and decoded; a request or a call may change them for itself.

    The per-call knobs of :class:`~darkpose.service.core.pipeline.Pipeline` (frozen; change
    with :meth:`replace`).

    ``decode`` / ``blur_kernel``: ``None`` = what the pose model's card says
    (:meth:`Pipeline.resolve_options`); ``max_persons`` bounds the boxes sent to the pose model
    (highest box scores first; the detector's own cap is a separate setting);
    ``oks_nms_threshold`` ≥ 1 disables OKS-NMS; ``box_padding`` enlarges each box around its
    centre before cropping (1.25 as in HRNet/mmpose).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    decode: DecodeMethod | None = Field(
        None,
        description="heatmap decoder (darkpose.service.core.codec.DECODERS); None = the "
        "model card's",
    )
    blur_kernel: BlurKernel | None = Field(
        None,
        description="DARK blur kernel (odd); None = the model card's (docs: "
        "accuracy.md#blur-kernel)",
    )
    flip: bool = Field(
        default_factory=lambda: bool(default_profile_value("flip")),
        description="flip test: also run the mirrored crops and average (twice the pose time); "
        "default: the profile's (docs: accuracy.md#flip)",
    )
    flip_shift: bool = Field(
        True,
        description="shift the mirrored heatmaps by one pixel before averaging (flip test)",
    )
    det_score_threshold: Probability = Field(
        default_factory=lambda: float(default_profile_value("det_score_threshold")),
        description="serving detector score threshold; default: the profile's, the best F1 of "
        "persons matched at OKS >= 0.5 for its detector (docs: accuracy.md#serving-threshold)",
    )
    max_persons: PersonCount = Field(
        30,
        description="persons returned when a request does not ask (≤ max_persons)",
    )
    oks_nms_threshold: OksThreshold = Field(
        0.9,
        description="OKS above which the lower-scored of two persons is dropped; 1 and above: "
        "no OKS-NMS (docs: accuracy.md#did-not-help)",
    )
    soft_nms_sigma: SoftNmsSigma = Field(
        0.5,
        description="soft OKS-NMS: each person's score × exp(-OKS²/sigma) against every "
        "higher-scored person kept, so duplicates rank last; 0: only the OKS-NMS drop "
        "(docs: accuracy.md#soft-oks-nms)",
    )
    keypoint_score_threshold: Probability = Field(
        0.2,
        description="keypoints above this score count in a person's rescored score (docs: "
        "accuracy.md#did-not-help)",
    )
    box_padding: BoxPadding = Field(
        default_factory=lambda: float(default_profile_value("box_padding")),
        description="person box enlargement before cropping for the pose model; default: the "
        "profile's (1.25 as in HRNet/mmpose; 1.15 in accurate, docs: accuracy.md#padding)",
    )

    test_paddings: TestPaddings = Field(
        default_factory=lambda: tuple(default_profile_value("test_paddings")),
        description="multi-scale test: further box paddings the pose model also runs at (one "
        "more pose pass per person each); a keypoint is the median over all passes, "
        "box_padding's included; default: the profile's (docs: accuracy.md#multi-scale-test)",
    )

    @property
    def crops_per_person(self) -> int:
        """Pose-model crops per person: one per padding (``box_padding`` and each of
        ``test_paddings``), twice that with ``flip``."""
        return (1 + len(self.test_paddings)) * (2 if self.flip else 1)

    @property
    def max_crops(self) -> int:
        """Most pose-model crops one image may send to each pose model: ``max_persons`` ×
        :attr:`crops_per_person`."""
        return self.max_persons * self.crops_per_person

    def __init__(self, **data: Any) -> None:
        """Strict validation; :class:`InvalidParameter` ("expected X, got Y") on a bad value."""
        try:
            self.__pydantic_validator__.validate_python(data, self_instance=self, strict=True)
        except ValidationError as exc:
            raise InvalidParameter(describe_validation_errors(exc.errors())) from None

    # Validated as a field of another model (``Settings.pipeline``, from environment text),
    # pydantic's own lax validation runs instead of this ``__init__``: the marker is pydantic's
    # own (``BaseModel.__init__`` carries it); tests/test_rules.py checks both paths.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> PipelineOptions:
        """A copy with ``changes`` applied (validated)."""
        if not changes:
            return self
        return type(self)(**{**self.__dict__, **changes})

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> PipelineOptions:
        """``settings.pipeline`` (a :class:`darkpose.service.settings.Settings`) with
        ``overrides`` applied."""
        options: PipelineOptions = settings.pipeline
        return options.replace(**overrides)


def given(**values: Any) -> dict[str, Any]:
    """The ``values`` that are not ``None``: the overrides a caller (a request's query, a
    command line) actually gave, for :meth:`PipelineOptions.replace` or ``Settings(...)``."""
    return {name: value for name, value in values.items() if value is not None}


#: The setting (and ``DARKPOSE_<NAME>`` environment variable) of each option: its own name,
#: except ``max_persons``, whose setting is ``default_max_persons`` (``max_persons`` is the
#: settings' upper bound of a request's ``max_persons``).
SETTING_NAMES: dict[str, str] = {
    name: ("default_max_persons" if name == "max_persons" else name)
    for name in PipelineOptions.model_fields
}
