"""Offline API docs: ``GET /docs`` (Swagger UI), ``GET /redoc`` and ``GET /`` (→ ``/docs``).

FastAPI's own pages load Swagger UI / ReDoc from a CDN, which an air-gapped host cannot reach.
The assets here come from the ``fastapi-offline`` package (Swagger UI 5, which renders the
OpenAPI 3.1 document FastAPI writes, and ReDoc), served under ``/docs/static``; nothing is
fetched from the network.  None of these routes is part of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/docs/static"


def static_dir() -> Path:
    """The directory of the Swagger UI / ReDoc assets (shipped by ``fastapi-offline``)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


def install(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc``, the assets and ``/`` on ``app`` (built with
    ``docs_url=None, redoc_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=static_dir()), name="docs-static")
    router = APIRouter(include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @router.get("/", response_class=RedirectResponse, status_code=307)
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(at(request, "/docs"), status_code=307)

    def at(request: Request, path: str) -> str:
        """``path`` under the app's mount point (``root_path``)."""
        return f"{request.scope.get('root_path', '')}{path}"

    @router.get("/docs", response_class=HTMLResponse)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=at(request, openapi_url),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=at(request, oauth2_url),
            swagger_js_url=at(request, f"{STATIC_URL}/swagger-ui-bundle.js"),
            swagger_css_url=at(request, f"{STATIC_URL}/swagger-ui.css"),
            swagger_favicon_url=at(request, f"{STATIC_URL}/favicon.png"),
        )

    @router.get(oauth2_url, response_class=HTMLResponse)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc", response_class=HTMLResponse)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=at(request, openapi_url),
            title=f"{app.title} - ReDoc",
            redoc_js_url=at(request, f"{STATIC_URL}/redoc.standalone.js"),
            redoc_favicon_url=at(request, f"{STATIC_URL}/favicon.png"),
            with_google_fonts=False,
        )

    app.include_router(router)
