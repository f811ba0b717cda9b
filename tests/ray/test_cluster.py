"""Both Ray Serve topologies on a real local 2-node × 1-CPU cluster, on the shared models.

``pipeline`` (default): 100 real ``POST /pose`` from 8 client threads to two ``Ingress``
replicas, one per node, each running the whole pipeline.  Answers equal the single-process
service's (≤ 1e-4 px), both replicas served requests, pose crops of different requests
shared model calls inside a replica (the in-process micro-batcher), and the bytes crossing
the proxy → replica hop stay within 1.5× the encoded image + JSON answer.

``split``: the same check through ``Ingress`` → two ``PoseModel`` replicas (one per node):
uint8 crops go out, keypoints come back, calls of different requests share model calls.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import IMAGES, MODELS, SHARED

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

N_IMAGES = 25
CLIENTS = 8
SETTINGS: dict[str, Any] = {"model_dir": str(MODELS), "intra_op_threads": 1}
#: Batching knobs of the Ray apps only (they do not change answers): one batcher thread and
#: a 20 ms window, so that crops of concurrent requests meet in one model call.
APP_SETTINGS: dict[str, Any] = {**SETTINGS, "batch_workers": 1, "max_wait_ms": 20.0}
#: 2 CPUs in all: one pipeline replica per node.
PIPELINE_OPTIONS: dict[str, dict[str, Any]] = {
    "Ingress": {
        "num_replicas": 2,
        "max_replicas_per_node": 1,
        "ray_actor_options": {"num_cpus": 0.5},
    }
}
#: One ingress, one PoseModel replica per node (room left while the pipeline app drains).
SPLIT_OPTIONS: dict[str, dict[str, Any]] = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.25}},
    "PoseModel": {
        "num_replicas": 2,
        "max_replicas_per_node": 1,
        "ray_actor_options": {"num_cpus": 0.25},
        "user_config": {"max_batch_size": 32, "batch_wait_timeout_s": 0.02},
    },
}
#: Bytes of one uint8 crop of the 256×192 pose input.
CROP_BYTES = 3 * 256 * 192


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


def _stats(deployment: str) -> list[dict[str, Any]]:
    from ray import serve

    from darkpose.service.ray_app import APP_NAME

    got = serve.get_deployment_handle(deployment, APP_NAME).broadcast("stats").results()
    return list(got.values()) if isinstance(got, dict) else list(got)


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    """The single-process service's answers (its own FastAPI app, in-process batching)."""
    pytest.importorskip("ray.serve", reason="needs the optional `ray` extra (ray[serve])")
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from darkpose.service.settings import Settings

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
def deploy(ray_two_nodes: Any) -> Iterator[Callable[[str], Any]]:
    """``deploy(topology)``: (re)deploy the app in that topology (kept while tests ask for the
    same one; the tests below run pipeline first, then split)."""
    from ray import serve

    from darkpose.service.ray_app import APP_NAME
    from darkpose.service.ray_app.builder import build_app
    from darkpose.service.ray_app.local_cluster import free_port

    current: dict[str, Any] = {}

    def _deploy(topology: str) -> Any:
        if current.get("topology") == topology:
            return current["app"]
        metrics = f"127.0.0.1:{free_port()}"
        options = PIPELINE_OPTIONS if topology == "pipeline" else SPLIT_OPTIONS
        app = build_app(
            APP_SETTINGS, options, metrics_address=metrics, topology=topology, measure_bytes=True
        )
        serve.run(app, name=APP_NAME, route_prefix="/")
        deadline = time.monotonic() + 120
        status, body = _get(ray_two_nodes.url + "/readyz")
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.25)
            status, body = _get(ray_two_nodes.url + "/readyz")
        assert status == 200, body
        current["topology"] = topology
        current["app"] = SimpleNamespace(
            url=ray_two_nodes.url,
            node_ids=ray_two_nodes.node_ids,
            metrics_url=f"http://{metrics}/metrics",
        )
        return current["app"]

    yield _deploy
    if current:
        serve.delete(APP_NAME)


def _assert_same_persons(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert got["image"] == want["image"], where
    assert len(got["persons"]) == len(want["persons"]), where
    for g, w in zip(got["persons"], want["persons"], strict=True):
        np.testing.assert_allclose(g["bbox"], w["bbox"], atol=1e-4, err_msg=where)
        np.testing.assert_allclose(
            np.asarray(g["keypoints"]).reshape(-1, 3)[:, :2],
            np.asarray(w["keypoints"]).reshape(-1, 3)[:, :2],
            atol=1e-4,
            rtol=0,
            err_msg=where,
        )
        np.testing.assert_allclose(
            np.asarray(g["keypoints"])[2::3], np.asarray(w["keypoints"])[2::3], atol=1e-4
        )
        assert g["score"] == pytest.approx(w["score"], abs=1e-4), where


def _load_and_compare(url: str, reference: list[dict[str, Any]], n_requests: int) -> int:
    """``n_requests`` shuffled POSTs from CLIENTS threads, all equal to ``reference``;
    returns how many answers had persons."""
    images = _images()
    order = [i % N_IMAGES for i in range(n_requests)]
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda i: _post(url, images[i]), order))
    failed = [(i, s, b) for i, (s, b) in zip(order, answers, strict=True) if s != 200]
    assert not failed, f"expected {n_requests} × 200, got {len(failed)} failures: {failed[:3]}"
    assert sum(len(b["persons"]) for _, b in answers) > n_requests  # real work was done
    for i, (_, body) in zip(order, answers, strict=True):
        _assert_same_persons(body, reference[i], f"image #{i}")
    return sum(1 for _, b in answers if b["persons"])


# --- topology "pipeline" (the default) --------------------------------------------------------


def test_pipeline_replicas_on_both_nodes_match_the_single_process_service(
    reference: list[dict[str, Any]], deploy: Callable[[str], Any]
) -> None:
    app = deploy("pipeline")
    _load_and_compare(app.url, reference, 100)

    stats = _stats("Ingress")
    assert len(stats) == 2
    assert {s["node_id"] for s in stats} == set(app.node_ids), stats
    assert all(s["requests_ok"] > 0 for s in stats), stats  # the router used both replicas
    # The in-process micro-batcher merged pose crops of different requests into one call.
    assert sum(s["pose_pieces"] for s in stats) > sum(s["pose_batches"] for s in stats), stats

    # Only the encoded image and the JSON answer cross the proxy → replica boundary.
    hop = [s["bytes"]["proxy"] for s in stats]
    crossing = sum(h["received"] + h["sent"] for h in hop)
    payload = sum(h["image"] + h["answer"] for h in hop)
    assert sum(h["calls"] for h in hop) >= 100
    assert payload < crossing <= 1.5 * payload, hop
    assert set(stats[0]["bytes"]) == {"proxy"}  # no other hop in this topology


def test_pipeline_serves_the_same_routes_and_metrics_per_replica(
    deploy: Callable[[str], Any],
) -> None:
    from ray import serve

    from darkpose.service.ray_app import APP_NAME
    from darkpose.service.settings import Settings

    app = deploy("pipeline")
    # A replica's registry has the stage metrics once it has served a request: post until
    # both have (this test does not rely on the load of another).
    images, deadline, k = _images(), time.monotonic() + 120, 0
    while not all(s["requests_ok"] > 0 for s in _stats("Ingress")):
        assert time.monotonic() < deadline, "expected both replicas to serve a request"
        status, _ = _post(app.url, images[k % len(images)])
        assert status == 200
        k += 1
    status, body = _get(app.url + "/v1/models")
    assert status == 200
    names = [Path(p).stem for p in Settings(**SETTINGS).pose_models]
    assert [m["name"] for m in json.loads(body)["pose_models"]] == names
    assert json.loads(body)["batching"]["enabled"] is True  # the in-process batcher is on
    status, body = _get(app.url + "/metrics")
    assert status == 200
    texts = serve.get_deployment_handle("Ingress", APP_NAME).broadcast("metrics_text").results()
    texts = list(texts.values()) if isinstance(texts, dict) else list(texts)
    assert len(texts) == 2
    # Each replica also serves its registry on its own port (both replicas share this host,
    # so the second one took the next port of the range).
    ports = sorted(s["metrics_port"] for s in _stats("Ingress"))
    first = int(app.metrics_url.rsplit(":", 1)[1].split("/")[0])
    assert ports == [first, first + 1]
    for port in ports:
        status, direct = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"darkpose_stage_seconds_count" in direct
    for text in [body.decode(), *texts]:
        for stage in ("detect", "crop", "pose", "decode", "postprocess"):
            assert f'darkpose_stage_seconds_count{{stage="{stage}"}}' in text, stage
        assert "darkpose_batch_size_count" in text
    # Bad input is mapped by the service's own error handlers, through Ray.
    status, err = _post(app.url, b"not an image")
    assert status == 400, err
    assert "invalid_image" in json.dumps(err)


def _check_stream_and_video(app: Any) -> None:
    """``/pose/stream`` (WebSocket) and ``/pose/video`` (NDJSON) through Serve's proxy: one
    connection or one upload is one ingress replica, which holds its tracker from start to end."""
    from websockets.sync.client import connect

    frame = _images()[0]
    with connect(app.url.replace("http://", "ws://") + "/pose/stream", open_timeout=120) as ws:
        assert json.loads(ws.recv(timeout=120))["type"] == "ready"
        answers = []
        for _ in range(3):
            ws.send(frame)
            answers.append(json.loads(ws.recv(timeout=120)))
    assert [(a["type"], a["frame"]) for a in answers] == [("frame", 0), ("frame", 1), ("frame", 2)]
    ids = [{p["track_id"] for p in a["persons"]} for a in answers]
    assert ids[0] and ids[0] == ids[-1]  # the same persons keep their ids on this replica

    clip = sorted((SHARED / "data" / "video").glob("*.mp4"))[0].read_bytes()
    req = urllib.request.Request(
        app.url + "/pose/video", data=clip, headers={"Content-Type": "video/mp4"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    frames = [x for x in lines if "persons" in x]
    assert frames and [f["frame"] for f in frames] == list(range(len(frames)))
    assert any(f["persons"] for f in frames)


def test_pipeline_carries_the_live_stream_and_the_streamed_video(
    deploy: Callable[[str], Any],
) -> None:
    _check_stream_and_video(deploy("pipeline"))


# --- topology "split" --------------------------------------------------------------------------


def test_split_pose_pool_on_both_nodes_matches_the_single_process_service(
    reference: list[dict[str, Any]], deploy: Callable[[str], Any]
) -> None:
    app = deploy("split")
    with_persons = _load_and_compare(app.url, reference, 60)

    stats = _stats("PoseModel")
    assert len(stats) == 2
    assert {s["node_id"] for s in stats} == set(app.node_ids), stats
    assert sum(s["jobs"] for s in stats) >= with_persons > 0  # one pose job per such image
    # The pose replicas' micro-batcher merged jobs of different requests into one call.
    assert sum(s["pieces"] for s in stats) > sum(s["batches"] for s in stats), stats
    assert max(s["max_crops_per_batch"] for s in stats) > 1, stats

    (ingress,) = _stats("Ingress")
    pose = ingress["bytes"]["pose"]
    assert pose["calls"] >= with_persons and pose["crops"] > pose["calls"]
    # Compact: uint8 crops out (not float32 = 4×), keypoints and scores back (not heatmaps).
    assert CROP_BYTES * pose["crops"] < pose["sent"] < 1.05 * CROP_BYTES * pose["crops"], pose
    assert pose["received"] < 600 * pose["crops"], pose

    # The ingress replica's own registry on its metrics address.
    status, text = _get(app.metrics_url)
    assert status == 200 and b'darkpose_stage_seconds_count{stage="pose"}' in text


def test_split_carries_the_live_stream_and_the_streamed_video(
    deploy: Callable[[str], Any],
) -> None:
    """The same through the split topology: the ingress tracks, the pose pool runs the crops."""
    _check_stream_and_video(deploy("split"))


def test_split_pose_deployment_splits_calls_larger_than_the_batch(
    deploy: Callable[[str], Any],
) -> None:
    """40 crops with max_batch_size 32: two batched pieces, same heatmaps as one local call."""
    from ray import serve

    from darkpose.service.ray_app import APP_NAME, POSE_NAME
    from darkpose.service.runtime.factory import build_pose_models
    from darkpose.service.settings import Settings

    deploy("split")
    crops = np.random.default_rng(0).normal(size=(40, 3, 256, 192)).astype(np.float32)
    handle = serve.get_deployment_handle(POSE_NAME, APP_NAME)
    got = handle.infer.remote(crops).result(timeout_s=120)
    (local,) = build_pose_models(Settings(**SETTINGS))
    want = local.infer(crops)
    assert got.shape == want.shape and got.shape[0] == 40
    np.testing.assert_allclose(got, want, atol=1e-4)
    empty = handle.infer.remote(crops[:0]).result(timeout_s=60)
    assert empty.shape == (0, *want.shape[1:])


def test_a_pose_call_timing_out_inside_ray_is_a_504_json_error(
    deploy: Callable[[str], Any],
) -> None:
    """The split ingress's deadline on a real pose call maps to 504 ``upstream_timeout``."""
    from ray import serve

    from darkpose.service.api.errors import response_for_error
    from darkpose.service.ray_app import APP_NAME, POSE_NAME
    from darkpose.service.ray_app.common import UpstreamTimeout, await_result

    deploy("split")
    crops = np.zeros((40, 3, 256, 192), np.float32)
    handle = serve.get_deployment_handle(POSE_NAME, APP_NAME)
    with pytest.raises(UpstreamTimeout, match=r"PoseModel: expected an answer within") as info:
        await_result(handle.infer.remote(crops), 1e-4, POSE_NAME)
    response = response_for_error(info.value, "rid-1")
    assert response.status_code == 504
    assert json.loads(bytes(response.body))["error"]["code"] == "upstream_timeout"
