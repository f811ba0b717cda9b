"""Operator endpoints: ``GET /metrics`` (Prometheus exposition) and ``GET /v1/models``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from darkpose.service.api.deps import StateDep
from darkpose.service.api.schemas import ModelsResponse

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: StateDep) -> Response:
    body, ctype = state.metrics.render()
    return Response(body, media_type=ctype)


@router.get("/v1/models", response_model=ModelsResponse, summary="Loaded models and settings")
async def models(state: StateDep) -> ModelsResponse:
    return state.model_info()
