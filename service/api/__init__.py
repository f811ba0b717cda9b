"""HTTP service (FastAPI): ``create_app(settings=None, *, pipeline=None)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, pipeline: Pipeline | None = None) -> FastAPI:
    """Build the FastAPI app (see :func:`darkpose.service.api.app.create_app`)."""
    from darkpose.service.api.app import create_app as _create_app

    return _create_app(settings, pipeline=pipeline)
