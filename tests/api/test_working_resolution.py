"""``POST /pose`` on photos larger than the working side: answered in the original image's
coordinates, admitted at the working size, rendered at the original's overlay size."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import CROWD_IMAGE, api_settings, encode, imdecode, wait_ready

JPEG = {"Content-Type": "image/jpeg"}
SIDE = 640  # the 1920 px test photo is DCT-decoded at 1/2
BUDGET_MB = 100  # a 12 MP JPEG fits at the working size, not at full size


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[int, TestClient]]:
    """Working side → a ready app (one at SIDE, one at full resolution)."""
    from darkpose.service.api import create_app

    clients: dict[int, TestClient] = {}
    try:
        for side in (SIDE, 0):
            app = create_app(
                api_settings(working_side=side, memory_budget_mb=BUDGET_MB, max_image_bytes=8 << 20)
            )
            c = TestClient(app, raise_server_exceptions=False)
            c.__enter__()
            clients[side] = c
            wait_ready(c)
        yield clients
    finally:
        for c in clients.values():
            c.__exit__(None, None, None)


def big_photo(factor: int = 3) -> bytes:
    """The crowd photo (640×427) upscaled ``factor`` times, as a JPEG."""
    small = imdecode(CROWD_IMAGE.read_bytes())
    h, w = small.shape[:2]
    big = cv2.resize(small, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)
    return encode(big, ".jpg")


def test_large_photo_is_answered_in_original_coordinates(apps: dict[int, TestClient]) -> None:
    data = big_photo()
    answers = {}
    for side, client in apps.items():
        r = client.post("/pose", content=data, headers=JPEG)
        assert r.status_code == 200, r.text
        answers[side] = r.json()
    for body in answers.values():
        assert body["image"] == {"width": 1920, "height": 1281}
    working, full = answers[SIDE]["persons"], answers[0]["persons"]
    assert len(full) >= 2
    assert abs(len(working) - len(full)) <= 1
    # each confident person at full resolution has its match at the working side: the same
    # keypoints within 4% of its box height (the pose model saw a 2x smaller crop)
    for p in full[:3]:
        box = np.asarray(p["bbox"])
        kp = np.asarray(p["keypoints"]).reshape(-1, 3)
        best = min(working, key=lambda q: float(np.abs(np.asarray(q["bbox"]) - box).sum()))
        kq = np.asarray(best["keypoints"]).reshape(-1, 3)
        sure = (kp[:, 2] > 0.5) & (kq[:, 2] > 0.5)
        assert sure.sum() >= 5
        err = np.linalg.norm(kp[sure, :2] - kq[sure, :2], axis=1)
        assert float(np.median(err)) < 0.04 * (box[3] - box[1]), err


def test_admission_counts_the_working_size(apps: dict[int, TestClient]) -> None:
    """A 12 MP JPEG whose full-size estimate exceeds the memory budget is admitted when it is
    decoded at the working size, and refused (413) at full resolution."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (189, 252, 3), dtype=np.uint8)
    photo = encode(cv2.resize(base, (4032, 3024), interpolation=cv2.INTER_LINEAR), ".jpg")
    r = apps[SIDE].post("/pose", content=photo, headers=JPEG)
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 4032, "height": 3024}
    r = apps[0].post("/pose", content=photo, headers=JPEG)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert "memory_budget_mb" in r.json()["error"]["message"]


def test_render_has_the_original_overlay_size(apps: dict[int, TestClient]) -> None:
    # few persons: the overlay is drawn at full size, which the 100 MB budget holds for 5 crops
    query = "/pose?render=true&render_format=png&max_persons=5"
    r = apps[SIDE].post(query, content=big_photo(), headers=JPEG)
    assert r.status_code == 200, r.text[:300]
    overlay = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == (1281, 1920)
