"""The Ray Serve application on a real local 2-node × 1-CPU cluster, on the shared models.

~100 real ``POST /pose`` requests from 8 client threads; the answers must equal the
single-process service's (≤ 1e-4 px), pose calls from different requests must have been
batched together, and the ``PoseModel`` replicas must have run on both nodes.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import IMAGES, MODELS

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

N_IMAGES = 25
N_REQUESTS = 100
CLIENTS = 8
SETTINGS: dict[str, Any] = {"model_dir": str(MODELS), "intra_op_threads": 1}
#: 2 CPUs in all: PoseModel gets one replica per node, Ingress and Detector share the rest.
DEPLOYMENT_OPTIONS: dict[str, dict[str, Any]] = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.5}},
    "Detector": {"ray_actor_options": {"num_cpus": 0.5}},
    "PoseModel": {
        "num_replicas": 2,
        "max_replicas_per_node": 1,
        "ray_actor_options": {"num_cpus": 0.5},
        "user_config": {"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
    },
}


def _images() -> list[bytes]:
    paths = sorted(IMAGES.glob("*.jpg"))[:N_IMAGES]
    if len(paths) < N_IMAGES:
        pytest.fail(f"expected {N_IMAGES} coco-mini images in {IMAGES}, got {len(paths)}")
    return [p.read_bytes() for p in paths]


def _post(url: str, data: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(
        url + "/pose", data=data, headers={"Content-Type": "image/jpeg"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    """The single-process service's answers (its own FastAPI app, in-process batching)."""
    pytest.importorskip("ray.serve", reason="needs the optional `ray` extra (ray[serve])")
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.settings import Settings

    out = []
    app = create_app(Settings(**SETTINGS))
    with TestClient(app) as client:
        assert app.state.service.wait_ready(120), app.state.service.load_error
        for data in _images():
            r = client.post("/pose", content=data, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


@pytest.fixture(scope="module")
def ray_app(ray_two_nodes: Any) -> Iterator[Any]:
    from ray import serve

    from service.ray_app import APP_NAME
    from service.ray_app.builder import build_app
    from service.ray_app.local_cluster import free_port

    metrics = f"127.0.0.1:{free_port()}"
    app = build_app(SETTINGS, DEPLOYMENT_OPTIONS, metrics_address=metrics)
    serve.run(app, name=APP_NAME, route_prefix="/")
    deadline = time.monotonic() + 120
    status, body = _get(ray_two_nodes.url + "/readyz")
    while status != 200 and time.monotonic() < deadline:  # warm-up runs in the background
        time.sleep(0.25)
        status, body = _get(ray_two_nodes.url + "/readyz")
    assert status == 200, body
    yield SimpleNamespace(
        url=ray_two_nodes.url,
        node_ids=ray_two_nodes.node_ids,
        metrics_url=f"http://{metrics}/metrics",
    )
    serve.delete(APP_NAME)


def _assert_same_persons(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert got["image"] == want["image"], where
    assert len(got["persons"]) == len(want["persons"]), where
    for g, w in zip(got["persons"], want["persons"], strict=True):
        np.testing.assert_allclose(g["bbox"], w["bbox"], atol=1e-4, err_msg=where)
        np.testing.assert_allclose(
            np.asarray(g["keypoints"])[:, :2],
            np.asarray(w["keypoints"])[:, :2],
            atol=1e-4,
            rtol=0,
            err_msg=where,
        )
        np.testing.assert_allclose(
            np.asarray(g["keypoints"])[:, 2], np.asarray(w["keypoints"])[:, 2], atol=1e-4
        )
        assert g["score"] == pytest.approx(w["score"], abs=1e-4), where


def test_two_node_app_matches_the_single_process_service(
    reference: list[dict[str, Any]], ray_app: Any
) -> None:
    from ray import serve

    from service.ray_app import APP_NAME, POSE_NAME

    images = _images()
    order = [i % N_IMAGES for i in range(N_REQUESTS)]
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda i: _post(ray_app.url, images[i]), order))

    failed = [(i, s, b) for i, (s, b) in zip(order, answers, strict=True) if s != 200]
    assert not failed, f"expected {N_REQUESTS} × 200, got {len(failed)} failures: {failed[:3]}"
    assert sum(len(b["persons"]) for _, b in answers) > N_REQUESTS  # real work was done
    for i, (_, body) in zip(order, answers, strict=True):
        _assert_same_persons(body, reference[i], f"image #{i}")

    stats = serve.get_deployment_handle(POSE_NAME, APP_NAME).broadcast("stats").results()
    stats = list(stats.values()) if isinstance(stats, dict) else list(stats)
    assert len(stats) == 2
    assert {s["node_id"] for s in stats} == set(ray_app.node_ids), stats
    with_persons = sum(1 for _, b in answers if b["persons"])
    assert sum(s["calls"] for s in stats) >= with_persons > 0  # one pose call per such image
    # @serve.batch merged pose calls of different requests into one model call.
    assert max(s["max_calls_per_batch"] for s in stats) > 1, stats
    assert sum(s["multi_call_batches"] for s in stats) > 0, stats


def test_ingress_serves_the_same_routes_and_metrics(ray_app: Any) -> None:
    status, body = _get(ray_app.url + "/v1/models")
    assert status == 200
    models = json.loads(body)
    assert [m["name"] for m in models["pose_models"]] == ["pose_simplepose_256x192"]
    status, body = _get(ray_app.url + "/metrics")
    assert status == 200
    # The same registry, also on the replica's own metrics address (for per-replica scraping).
    status, direct = _get(ray_app.metrics_url)
    assert status == 200
    for text in (body.decode(), direct.decode()):
        for stage in ("detect", "crop", "pose", "decode", "postprocess"):
            assert f'darkpose_stage_seconds_count{{stage="{stage}"}}' in text, stage
    # Bad input is mapped by the service's own error handlers, through Ray.
    status, err = _post(ray_app.url, b"not an image")
    assert status == 400, err
    assert "invalid_image" in json.dumps(err)


def test_pose_deployment_splits_calls_larger_than_the_batch(ray_app: Any) -> None:
    """40 crops with max_batch_size 32: two batched pieces, same heatmaps as one local call."""
    from ray import serve

    from service.ray_app import APP_NAME, POSE_NAME
    from service.runtime.pose import OnnxPoseModel
    from tests.conftest import POSE_ONNX

    crops = np.random.default_rng(0).normal(size=(40, 3, 256, 192)).astype(np.float32)
    handle = serve.get_deployment_handle(POSE_NAME, APP_NAME)
    got = handle.infer.remote(crops).result(timeout_s=120)
    want = OnnxPoseModel(POSE_ONNX, providers="cpu", intra_op_threads=1).infer(crops)
    assert got.shape == want.shape == (40, 17, 64, 48)
    np.testing.assert_allclose(got, want, atol=1e-4)
    empty = handle.infer.remote(crops[:0]).result(timeout_s=60)
    assert empty.shape == (0, 17, 64, 48)
