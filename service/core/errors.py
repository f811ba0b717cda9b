"""One small error hierarchy for the whole service.

``InputError`` and its subclasses describe something the *caller* got wrong; the API maps
them to 4xx JSON bodies whose message says what was expected and what came.  ``Overloaded``
maps to 503 with ``Retry-After``.  Anything else is a bug or an infrastructure failure and is
answered 500 (logged with the request id).  The API maps these in exactly one place.
"""

from __future__ import annotations

import json
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


class NotReady(DarkPoseError):
    """Models are not loaded/warmed yet (HTTP 503)."""

    status_code = 503
    code = "not_ready"


def describe_validation_errors(
    errors: Sequence[Mapping[str, Any]], where: Callable[[Sequence[Any]], str] | None = None
) -> str:
    """pydantic's ``ValidationError.errors()`` as one line, ``"<where>: expected X, got Y"`` per
    error, joined by ``"; "`` (the one formatter of validation errors: settings, model cards,
    detector configs and HTTP requests use it).

    ``where(loc)`` names the place of an error (default: the dotted ``loc``); an error without
    a ``loc`` (a cross-field check, whose message names the fields) is its message alone.
    Messages that already say what they expected (our validators') are kept as they are.
    """
    parts = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if not loc:
            parts.append(msg)
            continue
        place = where(loc) if where is not None else ".".join(str(p) for p in loc)
        msg = msg.removeprefix(f"{loc[-1]}: ")  # a rule that names its field: named once
        got = err.get("input")
        shown = "{...}" if isinstance(got, dict) else json.dumps(got, default=str)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if err.get("type") == "missing":
            parts.append(f"{place}: expected a value, got none")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{place}: expected no such key (unknown field), got {shown}")
        elif "expected" in msg:
            parts.append(f"{place}: {msg}" + ("" if "got" in msg else f", got {shown}"))
        else:
            msg = msg.removeprefix("Input should be ")
            parts.append(f"{place}: expected {msg[:1].lower() + msg[1:]}, got {shown}")
    return "; ".join(parts)
