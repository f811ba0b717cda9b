"""HTTP details a newcomer meets: unknown query parameters, raw
bodies without an image Content-Type, tiny images, decode time in the total, offline docs,
``GET /``, overlay encoding, upright photos, per-request access log lines."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import IMAGES, encode, imdecode, running_server
from tests.conftest import match_persons, upright_and_sideways_jpeg

PHOTO = IMAGES / "000000211325.jpg"


@pytest.mark.parametrize(
    ("url", "name", "expected"),
    [
        ("/pose?decoder=argmax", "decoder", "expected one of decode, exif_orientation, flip,"),
        ("/pose?decode=dark&maxpersons=3", "maxpersons", "expected one of decode,"),
        ("/healthz?verbose=1", "verbose", "expected no query parameters, got"),
        ("/v1/models?x=1", "x", "expected no query parameters, got"),
    ],
)
def test_unknown_query_parameter_is_422_naming_it(
    client: TestClient, jpeg_bytes: bytes, url: str, name: str, expected: str
) -> None:
    if url.startswith("/pose"):
        r = client.post(url, content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    else:
        r = client.get(url)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"
    assert f"'{name}'" in r.json()["error"]["message"]
    assert expected in r.json()["error"]["message"]


def test_declared_query_parameters_are_accepted(client: TestClient, jpeg_bytes: bytes) -> None:
    url = "/pose?decode=argmax&flip=false&max_persons=2&exif_orientation=true"
    r = client.post(url, content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["model"]["decode"] == "argmax"


def test_form_urlencoded_image_body_is_accepted(client: TestClient) -> None:
    """``curl --data-binary @photo.jpg URL`` (no -H) sends application/x-www-form-urlencoded."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = client.post("/pose", content=PHOTO.read_bytes(), headers=form)
    assert r.status_code == 200, r.text
    assert len(r.json()["persons"]) >= 1
    png = encode(imdecode(PHOTO.read_bytes()))
    assert (
        client.post("/pose", content=png, headers={"Content-Type": "text/plain"}).status_code == 200
    )


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b"name=value&other=1", "application/x-www-form-urlencoded"),
        (b"hello, this is text\n" * 20, "text/plain"),
        (b"GIF89a" + b"\0" * 64, "application/x-www-form-urlencoded"),
    ],
)
def test_non_image_bodies_stay_415(client: TestClient, content: bytes, ctype: str) -> None:
    r = client.post("/pose", content=content, headers={"Content-Type": ctype})
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 640)])
def test_valid_image_below_the_minimum_side_is_200_with_no_persons(
    client: TestClient, h: int, w: int
) -> None:
    png = encode(np.zeros((h, w, 3), np.uint8))
    r = client.post("/pose", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["persons"] == [] and body["image"] == {"width": w, "height": h}
    r = client.post("/pose?render=true", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and imdecode(r.content).shape[:2] == (h, w)


def test_total_time_includes_image_decoding(client: TestClient, jpeg_bytes: bytes) -> None:
    r = client.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    t = r.json()["timings_ms"]
    assert t["image_decode"] > 0
    stages = ("image_decode", "detect", "crop", "pose", "decode", "postprocess")
    assert t["total"] >= sum(t[k] for k in stages)


def test_docs_work_offline(client: TestClient) -> None:
    """/docs and /redoc reference only assets this app serves itself (no CDN)."""
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
        refs += re.findall(r"""url:\s*['"]([^'"]+)['"]""", r.text)
        assert refs, r.text
        for ref in refs:
            assert not ref.startswith(("http:", "https:", "//")), f"{page} loads {ref}"
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            assert len(asset.content) > 100, ref
    js = client.get("/docs/static/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in js


def test_root_points_to_the_docs(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (301, 302, 307, 308)
    assert r.headers["location"].endswith("/docs")


def test_render_is_a_compact_jpeg_png_on_request(client: TestClient) -> None:
    """A photo overlay as PNG is ~0.5 MB (photos do not compress losslessly): the default is
    JPEG, several times smaller; PNG stays available."""
    data, ctype = PHOTO.read_bytes(), {"Content-Type": "image/jpeg"}
    jpeg = client.post("/pose?render=true", content=data, headers=ctype)
    png = client.post("/pose?render=true&render_format=png", content=data, headers=ctype)
    assert jpeg.status_code == png.status_code == 200
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert png.headers["content-type"] == "image/png"
    assert imdecode(jpeg.content).shape == imdecode(png.content).shape == imdecode(data).shape
    assert len(jpeg.content) * 3 < len(png.content)


def test_sideways_photo_is_answered_upright(client: TestClient) -> None:
    """A real JPEG stored rotated with EXIF Orientation=6: the persons and keypoints of the
    upright photo, in the upright frame; exif_orientation=false answers in the stored frame."""
    upright, sideways = upright_and_sideways_jpeg(PHOTO)
    ctype = {"Content-Type": "image/jpeg"}
    a = client.post("/pose", content=upright, headers=ctype).json()
    b = client.post("/pose", content=sideways, headers=ctype).json()
    assert b["image"] == a["image"] == {"width": 640, "height": 427}
    assert len(b["persons"]) == len(a["persons"]) >= 6

    def coco(body: dict[str, object]) -> list[dict[str, object]]:
        out = []
        for p in body["persons"]:  # type: ignore[attr-defined]
            x1, y1, x2, y2 = p["bbox"]
            out.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "keypoints": p["keypoints"]})
        return out

    assert max(match_persons(coco(a), coco(b))) < 3.0
    raw = client.post("/pose?exif_orientation=false", content=sideways, headers=ctype).json()
    assert raw["image"] == {"width": 427, "height": 640}


def test_access_log_lines_and_log_level(tmp_path: Path) -> None:
    """A real ``darkpose serve``: one INFO line per request (method, path, status, ms, request
    id) by default; DARKPOSE_LOG_LEVEL=WARNING silences the service's own INFO loggers."""
    log = tmp_path / "info.log"
    with running_server(env={"DARKPOSE_WARMUP": "false"}, log=log, log_level=None) as server:
        base = server.base
        r = httpx.post(
            base + "/pose",
            content=PHOTO.read_bytes(),
            headers={"Content-Type": "image/jpeg", "X-Request-ID": "req-42"},
            timeout=60,
        )
        assert r.status_code == 200
        assert httpx.get(base + "/nope", timeout=10).status_code == 404
    text = log.read_text()
    access = r"INFO darkpose\.service\.api\.access: "
    assert re.search(access + r"POST /pose 200 [\d.]+ ms id=req-42", text), text
    assert re.search(access + r"GET /nope 404 [\d.]+ ms id=\w+", text), text

    quiet = tmp_path / "warning.log"
    env = {"DARKPOSE_WARMUP": "false", "DARKPOSE_LOG_LEVEL": "WARNING"}
    with running_server(env=env, log=quiet, log_level=None) as server:
        assert httpx.get(server.base + "/healthz", timeout=10).status_code == 200
    assert " INFO " not in quiet.read_text(), quiet.read_text()
