"""The HTTP layer's layout (issue 13.8): routes live in their modules, the state is typed."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Iterator

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from darkpose.service.api import create_app
from darkpose.service.api.state import ServiceState
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from tests.api.conftest import api_settings

EXPECTED_MODULES = {
    "/pose": "darkpose.service.api.routes.pose",
    "/pose/video": "darkpose.service.api.routes.video",
    "/healthz": "darkpose.service.api.routes.health",
    "/readyz": "darkpose.service.api.routes.health",
    "/metrics": "darkpose.service.api.routes.ops",
    "/v1/models": "darkpose.service.api.routes.ops",
    "/": "darkpose.service.api.routes.docs",
    "/docs": "darkpose.service.api.routes.docs",
    "/docs/oauth2-redirect": "darkpose.service.api.routes.docs",
    "/redoc": "darkpose.service.api.routes.docs",
}


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The API routes of an app, looking into included routers (FastAPI may keep them nested)."""
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def test_routes_come_from_route_modules() -> None:
    app = create_app(api_settings(warmup=False))
    got = {r.path: r.endpoint.__module__ for r in api_routes(app.routes)}
    assert got == EXPECTED_MODULES


def test_state_and_route_signatures_are_typed() -> None:
    hints = typing.get_type_hints(ServiceState.__init__)
    assert hints["pipeline"] == Pipeline | None
    assert typing.get_type_hints(ServiceState.require_ready)["return"] is Pipeline
    assert typing.get_type_hints(ServiceState.options)["return"] is PipelineOptions
    app = create_app(api_settings(warmup=False))
    for route in api_routes(app.routes):
        for name, p in inspect.signature(route.endpoint).parameters.items():
            ann = p.annotation
            assert ann is not inspect.Parameter.empty and ann is not typing.Any, (route.path, name)


def test_max_persons_bound_follows_the_setting() -> None:
    app = create_app(api_settings(warmup=False, max_persons=7, default_max_persons=5))
    params = app.openapi()["paths"]["/pose"]["post"]["parameters"]
    (mp,) = [p for p in params if p["name"] == "max_persons"]
    bounds = [s.get("maximum") for s in mp["schema"]["anyOf"] if "maximum" in s]
    assert bounds == [7]
