"""The choices and ranges of the service's knobs, each defined once.

Settings (:mod:`darkpose.service.settings`), model cards (:mod:`darkpose.service.core.cards`),
pipeline options (:class:`darkpose.service.core.pipeline.PipelineOptions`), the HTTP query
(:mod:`darkpose.service.api.schemas`), the CLIs and the Ray app use these types, so a change of
a rule here is a change everywhere.  The rules that also guard plain function calls live beside
the code they guard and are wrapped here: the decoder table and the blur-kernel rule
(:mod:`darkpose.service.core.codec`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError

from darkpose.service.core import codec
from darkpose.service.core.codec import check_blur_kernel, check_decode_method
from darkpose.service.core.errors import InvalidParameter, describe_validation_errors

#: Pixel order a network reads.
ChannelOrder = Literal["RGB", "BGR"]
#: onnxruntime execution providers: ``auto`` = CUDA when available, else CPU.
Providers = Literal["auto", "cpu", "cuda"]
#: Runtime behind a model session (``openvino``: optional extra, CPU only).
Backend = Literal["onnxruntime", "openvino"]
#: Float compute precision a runtime is asked for (int8 is a property of the model file).
FloatPrecision = Literal["fp32", "bf16"]
#: Precision a model file was written in (a model card's ``precision``).
FilePrecision = Literal["fp32", "fp16", "bf16", "int8"]

CHANNEL_ORDERS: tuple[str, ...] = get_args(ChannelOrder)
PROVIDERS: tuple[str, ...] = get_args(Providers)
BACKENDS: tuple[str, ...] = get_args(Backend)
FLOAT_PRECISIONS: tuple[str, ...] = get_args(FloatPrecision)

#: A heatmap decoder's name: a key of :data:`darkpose.service.core.codec.DECODERS` (checked
#: when validated, so a decoder registered at run time is accepted).
DecodeMethod = Annotated[str, AfterValidator(check_decode_method)]


def _blur_kernel_schema(schema: dict[str, Any]) -> None:
    """The JSON schema of :data:`BlurKernel`, read from the rule when a schema is made."""
    schema["minimum"] = codec.BLUR_KERNEL_MIN
    schema["description"] = f"odd, >= {codec.BLUR_KERNEL_MIN}"


#: The DARK blur kernel: an odd integer >= ``codec.BLUR_KERNEL_MIN`` (:func:`check_blur_kernel`).
BlurKernel = Annotated[
    int, AfterValidator(check_blur_kernel), Field(json_schema_extra=_blur_kernel_schema)
]
#: A score threshold or any other fraction in [0, 1].
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
#: An IoU threshold in (0, 1].
IoU = Annotated[float, Field(gt=0.0, le=1.0)]
#: The OKS-NMS threshold: > 0; 1 and above turn OKS-NMS off.
OksThreshold = Annotated[float, Field(gt=0.0)]
#: How much a box is enlarged around its centre before cropping (> 0; 1.25 in HRNet).
BoxPadding = Annotated[float, Field(gt=0.0)]
#: A count of persons (>= 1).
PersonCount = Annotated[int, Field(ge=1)]


def split_list(value: str) -> list[Any]:
    """``'a,b'`` → ``['a', 'b']``, ``'a'`` → ``['a']``, ``'["a", "b"]'`` (JSON) → its list."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"expected a plain value, a comma list or a JSON list, got {text[:60]!r}, "
                f"which does not parse as JSON ({exc.msg})"
            ) from None
        if not isinstance(parsed, list):
            raise ValueError(f"expected a JSON list, got {text[:60]!r}")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


def _as_tuple(value: Any) -> Any:
    """A list setting as a tuple: text is split (:func:`split_list`), a list becomes a tuple;
    anything else is left to the type's own check."""
    if isinstance(value, str):
        return tuple(split_list(value))
    return tuple(value) if isinstance(value, list) else value


#: Most further box paddings of the multi-scale test (each one more pose pass per person).
MAX_TEST_PADDINGS = 4
#: The box paddings of the multi-scale test's further pose passes: at most
#: :data:`MAX_TEST_PADDINGS` numbers > 0 (a comma list or JSON list as text).
TestPaddings = Annotated[
    tuple[BoxPadding, ...], BeforeValidator(_as_tuple), Field(max_length=MAX_TEST_PADDINGS)
]
#: The Gaussian width of soft OKS-NMS (>= 0; 0 = hard OKS-NMS only).
SoftNmsSigma = Annotated[float, Field(ge=0.0)]

_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def check(kind: Any, value: Any, what: str) -> Any:
    """``value`` validated (strictly: no string → number coercion) as the annotated type
    ``kind`` of this module, else :class:`InvalidParameter` ("what: expected ..., got ...").
    For plain Python calls (:class:`~darkpose.service.core.pipeline.PipelineOptions`)."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        errors = [{**err, "loc": (what, *err["loc"])} for err in exc.errors()]
        raise InvalidParameter(describe_validation_errors(errors)) from None
