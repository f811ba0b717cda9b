"""One small error hierarchy for the whole service.

``InputError`` and its subclasses describe something the *caller* got wrong; the API maps
them to 4xx JSON bodies whose message says what was expected and what came.  ``Overloaded``
maps to 503 with ``Retry-After``.  Anything else is a bug or an infrastructure failure and is
answered 500 (logged with the request id).  The API maps these in exactly one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class DarkPoseError(Exception):
    """Base class of every error raised on purpose by this project."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(DarkPoseError, ValueError):
    """Invalid input supplied by a caller (HTTP 400 unless a subclass says otherwise)."""

    status_code = 400
    code = "invalid_input"


class InvalidImage(InputError):
    """Bytes that are not a decodable, supported image (HTTP 400)."""

    code = "invalid_image"


class PayloadTooLarge(InputError):
    """Body, pixel count or image dimensions over the configured limit (HTTP 413)."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(InputError):
    """A content type we do not accept (HTTP 415)."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidParameter(InputError):
    """A query/option value out of its accepted range (HTTP 422)."""

    status_code = 422
    code = "invalid_parameter"


class Overloaded(DarkPoseError):
    """The bounded work queue is full: HTTP 503 with ``Retry-After`` seconds."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelError(DarkPoseError):
    """A model file or model description that cannot be used (configuration problem)."""

    code = "model_error"


class StartupError(DarkPoseError):
    """The server cannot start as configured: its address cannot be bound (port in use, a
    privileged port, an address this machine does not have) or its models are missing."""

    code = "startup_error"


class NotReady(DarkPoseError):
    """Models are not loaded/warmed yet (HTTP 503)."""

    status_code = 503
    code = "not_ready"


def _got(value: Any) -> str:
    """The value a user gave, as an error message quotes it (JSON, at most 80 characters; a
    mapping is ``{...}``)."""
    if value is None:
        return "nothing"
    text = "{...}" if isinstance(value, Mapping) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


#: What a pydantic error type expects, in words (types not listed: pydantic's own message).
_EXPECTED_BY_TYPE: dict[str, str] = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false (also 1/0, yes/no, on/off)",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "path_type": "a file system path",
    "missing": "a value",
}
#: pydantic bound error type → (its context key, the words for it).
_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def validation_error_text(err: Mapping[str, Any]) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) as "expected X, got Y",
    in words (no "Input should be", no doubled "expected").  A ``ValueError`` of our own
    validators already says "expected ..., got ..." and is kept as it is."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    loc = tuple(err.get("loc", ()))
    if loc:
        msg = msg.removeprefix(f"{loc[-1]}: ")  # a rule that names its field: named once
    got = _got(err.get("input"))
    if kind == "value_error" or "expected" in msg:
        if "expected" in msg:
            return msg if "got" in msg else f"{msg}, got {got}"
        return f"expected {msg}, got {got}"
    if kind == "missing":  # pydantic's input is then the enclosing value: not what is missing
        return "expected a value, got none"
    if kind == "extra_forbidden":
        return f"expected no such key (unknown field), got {got}"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, words = _BOUNDS[kind]
        expected = f"a number {words} {ctx[key]}"
    elif kind in ("literal_error", "enum") and "expected" in ctx:
        choices = re.findall(r"'([^']*)'", str(ctx["expected"]))
        expected = f"one of {', '.join(choices)}" if choices else str(ctx["expected"])
    elif kind in _EXPECTED_BY_TYPE:
        expected = _EXPECTED_BY_TYPE[kind]
    else:  # pydantic's words: "Input should be a valid X, <detail>" -> "a valid X"
        expected = msg.removeprefix("Input should be ").split(", ")[0] or "a valid value"
        expected = expected[:1].lower() + expected[1:]
    return f"expected {expected}, got {got}"


def describe_validation_errors(
    errors: Sequence[Mapping[str, Any]], where: Callable[[Sequence[Any]], str] | None = None
) -> str:
    """pydantic's ``ValidationError.errors()`` as one line, ``"<where>: expected X, got Y"`` per
    error (the words: :func:`validation_error_text`), joined by ``"; "`` (the one formatter of
    validation errors: settings, model cards, detector configs and HTTP requests use it).

    ``where(loc)`` names the place of an error (default: the dotted ``loc``); an error without
    a ``loc`` (a cross-field check, whose message names the fields) is its message alone.
    """
    parts = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if not loc:
            parts.append(str(err.get("msg", "invalid value")).removeprefix("Value error, "))
            continue
        place = where(loc) if where is not None else ".".join(str(p) for p in loc)
        parts.append(f"{place}: {validation_error_text(err)}")
    return "; ".join(parts)
