"""Typed FastAPI dependencies shared by the route modules.

``StateDep`` is the app's :class:`~darkpose.service.api.state.ServiceState` (stored on
``app.state.service`` by :func:`darkpose.service.api.app.create_app`); ``SettingsDep`` its settings.
:func:`reject_unknown_query` refuses query parameters the matched route does not declare
(422 naming them: ``?decoder=argmax`` must not silently answer with the default decoder).
None of them adds a parameter to the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from darkpose.service.api.state import ServiceState
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.settings import Settings


def get_state(request: Request) -> ServiceState:
    """The :class:`ServiceState` of the app serving ``request``."""
    state = getattr(request.app.state, "service", None)
    if not isinstance(state, ServiceState):
        raise RuntimeError(
            f"app.state.service: expected a ServiceState, got {type(state).__name__}"
        )
    return state


def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    """The settings the app was built with."""
    return state.settings


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _declared_query_names(route: APIRoute) -> frozenset[str]:
    cached = getattr(route, "_darkpose_query_names", None)
    if cached is None:
        cached = frozenset(_query_names(route.dependant))
        route._darkpose_query_names = cached  # type: ignore[attr-defined]
    return cached  # type: ignore[no-any-return]


def reject_unknown_query(request: Request) -> None:
    """Raise :class:`InvalidParameter` (422) for query parameters the route does not declare."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _declared_query_names(route)
    unknown = sorted({k for k in request.query_params if k not in known})
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        expected = f"one of {', '.join(sorted(known))}" if known else "no query parameters"
        raise InvalidParameter(
            f"query parameter {names}: expected {expected}, got an unknown parameter"
        )
