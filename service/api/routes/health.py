"""Liveness and readiness: ``GET /healthz`` (the process answers) and ``GET /readyz`` (models
loaded and warmed; 503 before)."""

from __future__ import annotations

from fastapi import APIRouter

from darkpose.service.api.deps import StateDep
from darkpose.service.api.schemas import HealthResponse, ReadyResponse, error_responses

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: models loaded and warmed (503 before)",
    responses=error_responses(503),
)
async def readyz(state: StateDep) -> ReadyResponse:
    state.require_ready()
    return ReadyResponse(status="ready", ready=True)
