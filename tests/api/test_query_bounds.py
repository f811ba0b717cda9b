"""The bounds of the ``POST /pose`` query follow the settings."""

from __future__ import annotations

from darkpose.service.api import create_app
from tests.api.conftest import api_settings


def test_max_persons_bound_follows_the_setting() -> None:
    app = create_app(api_settings(warmup=False, max_persons=7, default_max_persons=5))
    params = app.openapi()["paths"]["/pose"]["post"]["parameters"]
    (mp,) = [p for p in params if p["name"] == "max_persons"]
    bounds = [s.get("maximum") for s in mp["schema"]["anyOf"] if "maximum" in s]
    assert bounds == [7]
