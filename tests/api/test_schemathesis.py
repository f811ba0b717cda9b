"""Schemathesis over the app's own OpenAPI document (ASGI, real models): no server errors, every
status / content type / body documented.  Bounded: a few examples per operation."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api import create_app
from tests.api.conftest import api_settings

# Raw BMP bodies are binary like the other image types.
schemathesis.serializer.alias("image/bmp", "application/octet-stream")

APP = create_app(api_settings(max_wait_ms=1.0))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: schemathesis.Case) -> None:
    if not APP.state.service.wait_ready(90):
        raise AssertionError(f"expected the app ready, got {APP.state.service.load_error}")
    # Bodies that satisfy the schema ("a binary string") are mostly not decodable images, so a
    # 4xx answer to them is correct: the positive-data acceptance check does not apply.
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
