"""One small error hierarchy for the whole service.

``InputError`` and its subclasses describe something the *caller* got wrong; the API maps
them to 4xx JSON bodies whose message says what was expected and what came.  ``Overloaded``
maps to 503 with ``Retry-After``.  Anything else is a bug or an infrastructure failure and is
answered 500 (logged with the request id).  The API maps these in exactly one place.
"""

from __future__ import annotations


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
