"""Typed FastAPI dependencies shared by the route modules.

``StateDep`` is the app's :class:`~service.api.state.ServiceState` (stored on
``app.state.service`` by :func:`service.api.app.create_app`); ``SettingsDep`` its settings.
Neither adds a parameter to the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.state import ServiceState
from service.settings import Settings


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
