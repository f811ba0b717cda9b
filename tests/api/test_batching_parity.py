"""Results with cross-request micro-batching on are those with it off (≤ 1e-4 px)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import PERSON_IMAGES, api_settings, wait_ready


def _keypoints(client: TestClient, data: bytes, query: str) -> np.ndarray:
    r = client.post(f"/pose?{query}", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    persons = r.json()["persons"]
    return np.array([p["keypoints"] for p in persons], np.float64).reshape(len(persons), -1, 3)


@pytest.mark.parametrize("query", ["decode=dark", "decode=dark&flip=true"])
def test_batching_on_and_off_give_identical_keypoints(query: str) -> None:
    from darkpose.service.api import create_app

    images = [p.read_bytes() for p in PERSON_IMAGES]
    on = create_app(api_settings(batching=True, max_batch=64, max_wait_ms=30.0))
    off = create_app(api_settings(batching=False))
    with TestClient(on) as c_on, TestClient(off) as c_off:
        wait_ready(c_on)
        wait_ready(c_off)
        want = [_keypoints(c_off, d, query) for d in images]
        # concurrent requests: their crops share pose-model calls in the batcher
        with ThreadPoolExecutor(max_workers=len(images) * 2) as pool:
            got = list(pool.map(lambda d: _keypoints(c_on, d, query), images * 2))
        batcher = on.state.service.batchers[0]
        assert on.state.service.batchers and not off.state.service.batchers
        metrics = c_on.get("/metrics").text
    for i, g in enumerate(got):
        w = want[i % len(images)]
        assert g.shape == w.shape and w.shape[0] > 0
        np.testing.assert_allclose(g[..., :2], w[..., :2], atol=1e-4, rtol=0)
        np.testing.assert_allclose(g[..., 2], w[..., 2], atol=1e-5, rtol=0)
    assert batcher.calls >= 1
    assert "darkpose_batch_size_count" in metrics
