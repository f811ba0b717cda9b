"""Bad input → 4xx JSON ``{"error": {"code", "message"}, "request_id"}``, never 500; the app
keeps serving (a good request after each bad one succeeds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import (
    CROWD_IMAGE,
    animated_gif,
    png_bomb,
    tiff_bytes,
)

MAX_BYTES = 3 * 1024 * 1024  # api_settings()


def _jpeg() -> bytes:
    return CROWD_IMAGE.read_bytes()


@dataclass(frozen=True)
class Case:
    """One bad request: how to send it, which status/code/message must come back."""

    name: str
    status: int
    code: str
    message: str  # a substring of the error message
    query: str = ""
    content: Callable[[], bytes] | None = None
    content_type: str | None = "image/jpeg"
    files: Callable[[], Any] | None = None
    data: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _two_files() -> Any:
    return [
        ("image", ("a.jpg", _jpeg(), "image/jpeg")),
        ("image", ("b.jpg", _jpeg(), "image/jpeg")),
    ]


def _image_and_other_file() -> Any:
    return [("image", ("a.jpg", _jpeg(), "image/jpeg")), ("extra", ("b.jpg", b"xx", "image/jpeg"))]


CASES = [
    Case("empty raw body", 400, "invalid_image", "got an empty body", content=lambda: b""),
    Case(
        "truncated JPEG",
        400,
        "invalid_image",
        "JPEG",
        content=lambda: _jpeg()[: len(_jpeg()) // 2],
    ),
    Case(
        "random bytes",
        400,
        "invalid_image",
        "not a recognised image",
        content=lambda: np.random.default_rng(0).bytes(5000),
        content_type="application/octet-stream",
    ),
    Case(
        "text file as image/jpeg",
        400,
        "invalid_image",
        "not a recognised image",
        content=lambda: b"hello, this is a text file\n" * 10,
    ),
    Case(
        "text/plain content type",
        415,
        "unsupported_media_type",
        "got 'text/plain'",
        content=lambda: b"hello",
        content_type="text/plain",
    ),
    Case(
        "JSON content type",
        415,
        "unsupported_media_type",
        "got 'application/json'",
        content=lambda: b'{"image": "x"}',
        content_type="application/json",
    ),
    Case(
        "no content type, not an image",  # an image without one is accepted (its bytes)
        415,
        "unsupported_media_type",
        "got no Content-Type",
        content=lambda: b"plain words, not an image\n" * 8,
        content_type=None,
    ),
    Case(
        "empty body, no content type",  # curl -X POST .../pose without a body
        400,
        "invalid_image",
        "expected an image (raw bytes, or multipart with a file field 'image'), got an empty body",
        content=lambda: b"",
        content_type=None,
    ),
    Case(
        "empty body, form content type",  # curl --data-binary @empty.jpg without -H
        400,
        "invalid_image",
        "got an empty body",
        content=lambda: b"",
        content_type="application/x-www-form-urlencoded",
    ),
    Case(
        "multipart without the image field",
        400,
        "invalid_image",
        "expected a file field 'image'",
        files=lambda: {"file": ("a.jpg", _jpeg(), "image/jpeg")},
        content_type=None,
    ),
    Case(
        "multipart image part without a filename, not an image",
        400,
        "invalid_image",
        "not a recognised image",
        files=None,
        data={"image": "not a file"},
        content_type=None,
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        content=lambda: (
            b"--xyz\r\n"
            b'Content-Disposition: form-data; name="image"\r\n\r\n'
            b"not a file\r\n--xyz--\r\n"
        ),
    ),
    Case(
        "two image files",
        400,
        "invalid_image",
        "expected exactly one file",
        files=_two_files,
        content_type=None,
    ),
    Case(
        "image plus another file",
        400,
        "invalid_image",
        "expected exactly one file",
        files=_image_and_other_file,
        content_type=None,
    ),
    Case(
        "multipart without boundary",
        400,
        "invalid_image",
        "multipart",
        content=lambda: b"--abc\r\n\r\n",
        content_type="multipart/form-data",
    ),
    Case(
        "empty multipart body",
        400,
        "invalid_image",
        "got an empty body",
        content=lambda: b"",
        content_type="multipart/form-data; boundary=abc",
    ),
    Case(
        "raw body over the byte limit",
        413,
        "payload_too_large",
        f"expected at most {MAX_BYTES} bytes",
        content=lambda: b"\xff\xd8\xff" + b"\0" * MAX_BYTES,
    ),
    Case(
        "multipart file over the byte limit",
        413,
        "payload_too_large",
        f"expected at most {MAX_BYTES} bytes",
        files=lambda: {"image": ("big.jpg", b"\xff\xd8\xff" + b"\0" * MAX_BYTES, "image/jpeg")},
        content_type=None,
    ),
    Case(
        "decompression bomb 20000x20000 PNG",
        413,
        "payload_too_large",
        "400000000 pixels",
        content=png_bomb,
        content_type="image/png",
    ),
    Case(
        "animated GIF (multipart)",
        415,
        "unsupported_media_type",
        "GIF",
        files=lambda: {"image": ("a.gif", animated_gif(), "image/gif")},
        content_type=None,
    ),
    Case(
        "GIF content type",
        415,
        "unsupported_media_type",
        "got 'image/gif'",
        content=animated_gif,
        content_type="image/gif",
    ),
    Case(
        "TIFF bytes",
        415,
        "unsupported_media_type",
        "TIFF",
        content=tiff_bytes,
        content_type="application/octet-stream",
    ),
    Case(
        "negative score threshold",
        422,
        "invalid_parameter",
        "score_threshold",
        query="score_threshold=-0.5",
        content=_jpeg,
    ),
    Case(
        "score threshold above 1",
        422,
        "invalid_parameter",
        "score_threshold",
        query="score_threshold=1.5",
        content=_jpeg,
    ),
    Case(
        "score threshold 0: every candidate a person",
        422,
        "invalid_parameter",
        "'score_threshold'",
        query="score_threshold=0&max_persons=100&flip=true",
        content=_jpeg,
    ),
    Case(
        "score threshold under the floor",
        422,
        "invalid_parameter",
        "score_threshold",
        query="score_threshold=0.049",
        content=_jpeg,
    ),
    Case(
        "unknown decode method",
        422,
        "invalid_parameter",
        "'decode'",
        query="decode=magic",
        content=_jpeg,
    ),
    Case(
        "max persons 0",
        422,
        "invalid_parameter",
        "max_persons",
        query="max_persons=0",
        content=_jpeg,
    ),  # fmt: skip
    Case(
        "max persons huge",
        422,
        "invalid_parameter",
        "max_persons",
        query="max_persons=1000000",
        content=_jpeg,
    ),
    Case(
        "max persons not a number",
        422,
        "invalid_parameter",
        "max_persons",
        query="max_persons=many",
        content=_jpeg,
    ),  # fmt: skip
    Case(
        "flip not a boolean", 422, "invalid_parameter", "flip", query="flip=perhaps", content=_jpeg
    ),  # fmt: skip
    Case(
        "bad Content-Length header",
        400,
        "invalid_image",
        "Content-Length",
        content=_jpeg,
        headers={"Content-Length": "lots"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_clear_4xx(client: TestClient, case: Case, jpeg_bytes: bytes) -> None:
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    url = "/pose" + (f"?{case.query}" if case.query else "")
    if case.files is not None:
        r = client.post(url, files=case.files(), data=case.data or None, headers=headers)
    else:
        content = case.content() if case.content is not None else b""
        r = client.post(url, content=content, headers=headers)
    assert r.status_code == case.status, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["code"] == case.code
    assert case.message in body["error"]["message"], body["error"]["message"]
    assert body["request_id"] == r.headers["x-request-id"]
    # the server keeps serving
    ok = client.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    assert ok.status_code == 200


def test_at_least_twenty_kinds() -> None:
    assert len(CASES) >= 20


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/pose")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]
