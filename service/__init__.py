"""The DARK pose service: ``core`` (pure numpy/OpenCV) ← ``runtime`` (model backends) ←
``api`` | ``ray_app`` | ``commands`` | ``cli`` (the layers ``lint-imports`` checks)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: The installed distribution.
DISTRIBUTION = "darkpose-service"


def package_version() -> str:
    """The installed distribution's version (``darkpose-service``); ``0+unknown`` (a valid
    PEP 440 version) when it is not installed.  ``darkpose --version``, the OpenAPI document
    and ``darkpose.__version__`` read it."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
