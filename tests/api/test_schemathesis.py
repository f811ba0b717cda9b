"""Schemathesis over the app's own OpenAPI document (ASGI, real models), with every check,
positive data acceptance included: no server errors, every status / content type / body
documented, and every schema-valid request accepted.  Bounded: a few examples per operation.

A JSON schema cannot say "a decodable image", so the image bodies (raw image/* and
octet-stream, and the multipart ``image`` field, format ``binary``) are generated here as real
encoded images of random pixels and sizes (1 to 40 px a side: images under the minimum side
are valid requests with no persons)."""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode

from darkpose.service.api import create_app
from tests.api.conftest import api_settings

# Raw BMP bodies are binary like the other image types.
schemathesis.serializer.alias("image/bmp", "application/octet-stream")


@st.composite
def encoded_images(draw: st.DrawFn, fmt: str | None = None) -> bytes:
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    kind = fmt or draw(st.sampled_from(["JPEG", "PNG", "WEBP", "BMP"]))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, kind)
    return buf.getvalue()


for media, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/webp", "WEBP")):
    schemathesis.openapi.media_type(media, encoded_images(fmt))
schemathesis.openapi.media_type("image/bmp", encoded_images("BMP"))
schemathesis.openapi.media_type("application/octet-stream", encoded_images())
schemathesis.openapi.format("binary", encoded_images())  # the multipart field ``image``

APP = create_app(api_settings(max_wait_ms=1.0))
# POST /pose/video: no generated body is a decodable video of the accepted containers and
# codecs (a JSON schema cannot say so); tests/video covers its answers and every error class
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path="/pose/video")
# positive data (every request must be accepted) and negative data (every schema-invalid
# request must be refused with a 4xx)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: schemathesis.Case) -> None:
    if not APP.state.service.wait_ready(90):
        raise AssertionError(f"expected the app ready, got {APP.state.service.load_error}")
    response = case.call_and_validate()  # every check, positive data acceptance included
    assert response.status_code < 500
