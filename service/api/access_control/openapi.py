"""The OpenAPI document of an app with access control: the key headers as ``securitySchemes``
on every operation except the open probes and ``/metrics`` (generated clients send them), with
their 400/401; with fair-use limits or failed-auth throttling, the 429 on the same operations."""

from __future__ import annotations

from typing import Any

from darkpose.service.api.access_control.middleware import METRICS_PATH, OPEN_PATHS
from darkpose.service.api.access_control.policy import AccessPolicy

_429 = "over the client's rate or concurrency cap, or too many failed authentications"


def document_access(app: Any, policy: AccessPolicy) -> None:
    """Wrap ``app.openapi`` so that the generated document declares ``policy``."""
    keys = policy.keys.enabled
    limits = policy.buckets is not None or policy.max_inflight > 0
    if not (keys or limits):
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return dict(app.openapi_schema)
        schema = build()
        if keys:
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(
                {
                    "bearerKey": {"type": "http", "scheme": "bearer", "description": "API key"},
                    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
            )
        paths = schema.get("paths", {})
        error_content = next(  # the JSON error shape as the app documents its other errors
            (
                r["content"]
                for ops in paths.values()
                for op in ops.values()
                if isinstance(op, dict)
                for code, r in op.get("responses", {}).items()
                if str(code).startswith("5") and isinstance(r, dict) and "content" in r
            ),
            None,
        )

        def doc(text: str) -> dict[str, Any]:
            return {"description": text, **({"content": error_content} if error_content else {})}

        for path, ops in paths.items():
            if path in OPEN_PATHS or path == METRICS_PATH:
                continue
            for op in ops.values():
                if not isinstance(op, dict):
                    continue
                responses = op.setdefault("responses", {})
                if keys:
                    op["security"] = [{"bearerKey": []}, {"apiKeyHeader": []}]
                    responses.setdefault("401", doc("missing or unknown API key"))
                if limits or (keys and policy.auth_failures is not None):
                    responses.setdefault("429", doc(_429))
        app.openapi_schema = schema
        return dict(schema)

    app.openapi = openapi
