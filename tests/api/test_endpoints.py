"""POST /pose happy paths, health/readiness, model listing, metrics, request ids."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from darkpose.service.api.schemas import PoseResponse
from darkpose.service.core.types import COCO_KEYPOINTS
from tests.api.conftest import api_settings, imdecode, person_image_variant, wait_ready
from tests.conftest import CONTRACT_METRICS


def _check_pose_json(body: dict, width: int, height: int) -> None:
    PoseResponse.model_validate(body)  # the documented schema
    assert body["image"] == {"width": width, "height": height}
    assert body["persons"], "expected persons in a crowd image, got none"
    for p in body["persons"]:
        assert len(p["bbox"]) == 4
        # each keypoint once, as COCO's results format has it: [x1, y1, s1, x2, ...]
        assert set(p) == {"bbox", "box_score", "score", "keypoints"}
        assert len(p["keypoints"]) == 3 * 17 and all(isinstance(v, float) for v in p["keypoints"])
        xs, ys, ss = (np.array(p["keypoints"])[i::3] for i in range(3))
        assert np.all((ss >= 0.0) & (ss <= 1.0))
        # keypoints lie within the padded crop around the image
        assert np.all((xs > -0.5 * width) & (xs < 1.5 * width))
        assert np.all((ys > -0.5 * height) & (ys < 1.5 * height))
        assert 0.0 <= p["score"] <= 1.0
    scores = [p["score"] for p in body["persons"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model"]["keypoint_names"] == list(COCO_KEYPOINTS)
    assert body["model"]["input_size"] == [192, 256]
    for stage in ("detect", "crop", "pose", "decode", "postprocess", "total", "image_decode"):
        assert body["timings_ms"][stage] >= 0.0
    assert body["timings_ms"]["total"] > 0.0


def test_pose_multipart(client: TestClient, jpeg_bytes: bytes) -> None:
    r = client.post("/pose", files={"image": ("crowd.jpg", jpeg_bytes, "image/jpeg")})
    assert r.status_code == 200, r.text
    h, w = imdecode(jpeg_bytes).shape[:2]
    body = r.json()
    _check_pose_json(body, w, h)
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["model"]["batching"] is True
    assert body["model"]["decode"] == "dark"


def test_persons_are_coco_results_as_sent(client: TestClient, jpeg_bytes: bytes) -> None:
    """Each person's ``keypoints`` is the list pycocotools reads as a result's keypoints."""
    from pycocotools.coco import COCO

    body = client.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"}).json()
    w, h = body["image"]["width"], body["image"]["height"]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": w, "height": h}],
        "annotations": [],
        "categories": [{"id": 1, "name": "person", "keypoints": body["model"]["keypoint_names"]}],
    }
    gt.createIndex()
    sent = [
        {"image_id": 1, "category_id": 1, "keypoints": p["keypoints"], "score": p["score"]}
        for p in body["persons"]
    ]
    loaded = gt.loadRes(sent)
    anns = loaded.loadAnns(loaded.getAnnIds())
    assert len(anns) == len(body["persons"]) >= 1
    for ann, p in zip(anns, body["persons"], strict=True):
        kp = np.reshape(p["keypoints"], (-1, 3))
        assert ann["keypoints"] == p["keypoints"]
        x0, y0 = kp[:, 0].min(), kp[:, 1].min()
        assert ann["bbox"][:2] == pytest.approx([x0, y0])  # pycocotools' box from x, y


def test_pose_raw_body_equals_multipart(client: TestClient, jpeg_bytes: bytes) -> None:
    a = client.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    b = client.post("/pose", files={"image": ("x.jpg", jpeg_bytes, "image/jpeg")})
    assert a.status_code == b.status_code == 200
    ka = np.array([p["keypoints"] for p in a.json()["persons"]])
    kb = np.array([p["keypoints"] for p in b.json()["persons"]])
    np.testing.assert_allclose(ka, kb, atol=1e-4)


def test_query_options_are_applied(client: TestClient, jpeg_bytes: bytes) -> None:
    r = client.post(
        "/pose?decode=argmax&flip=true&max_persons=1&score_threshold=0.5&keypoint_threshold=0.3",
        content=jpeg_bytes,
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["decode"] == "argmax"
    assert body["model"]["flip"] is True
    assert len(body["persons"]) == 1
    assert body["persons"][0]["box_score"] >= 0.5
    # argmax decoding lands on heatmap pixel centres: 4 image px per heatmap px here, so the
    # decoded coordinates differ from DARK's sub-pixel ones
    dark = client.post("/pose?max_persons=1", content=jpeg_bytes,
                       headers={"Content-Type": "image/jpeg"}).json()  # fmt: skip
    assert not np.allclose(
        np.array(body["persons"][0]["keypoints"]).reshape(-1, 3)[:, :2],
        np.array(dark["persons"][0]["keypoints"]).reshape(-1, 3)[:, :2],
    )


def test_render_returns_the_overlay(client: TestClient, jpeg_bytes: bytes) -> None:
    r = client.post("/pose?render=true", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"  # render_format=png for a PNG
    overlay = imdecode(r.content)
    original = imdecode(jpeg_bytes)
    assert overlay.shape == original.shape
    assert np.mean(np.abs(overlay.astype(int) - original.astype(int))) > 0.1  # something drawn


@pytest.mark.parametrize("kind", ["gray", "rgba", "png16"])
def test_grayscale_rgba_and_16bit_png_are_valid_images(client: TestClient, kind: str) -> None:
    """Documented choice: these are valid images; they are converted to BGR and answered 200."""
    data = person_image_variant(kind)
    r = client.post("/pose", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["persons"]


def test_request_id_is_echoed(client: TestClient, jpeg_bytes: bytes) -> None:
    r = client.post(
        "/pose",
        content=jpeg_bytes,
        headers={"Content-Type": "image/jpeg", "X-Request-ID": "trace-abc.123"},
    )
    assert r.headers["x-request-id"] == "trace-abc.123"
    assert r.json()["request_id"] == "trace-abc.123"
    # an unreasonable incoming id is replaced by a fresh one
    r = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_health_ready_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    m = client.get("/v1/models").json()
    assert m["ready"] is True
    # the default pose model is PP-TinyPose (chosen by coco-mini AP; the small
    # SimpleBaseline model stays selectable as pose_simplepose_256x192.onnx)
    assert m["pose_models"][0]["name"] == "pp_tinypose_256x192"
    assert m["pose_models"][0]["codec"] == "dark"
    assert m["pose_models"][0]["input_size"] == [192, 256]
    assert m["pose_models"][0]["heatmap_size"] == [48, 64]
    assert m["pose_models"][0]["keypoints"] == 17
    assert (m["pose_models"][0]["backend"], m["pose_models"][0]["precision"]) == (
        "onnxruntime",
        "fp32",
    )
    assert m["detector"] == "yolox"
    assert "CPUExecutionProvider" in m["providers"]
    assert m["batching"]["enabled"] is True


def test_metrics_exposes_the_contract_names(client: TestClient, jpeg_bytes: bytes) -> None:
    assert client.post("/pose", content=jpeg_bytes,
                       headers={"Content-Type": "image/jpeg"}).status_code == 200  # fmt: skip
    client.post("/pose", content=b"", headers={"Content-Type": "image/jpeg"})
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in CONTRACT_METRICS:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert re.search(r'darkpose_requests_total\{route="/pose",status="200"\} [1-9]', text)
    assert re.search(r'darkpose_requests_total\{route="/pose",status="400"\} [1-9]', text)
    for stage in ("detect", "crop", "pose", "decode", "postprocess"):
        assert re.search(rf'darkpose_stage_seconds_count\{{stage="{stage}"\}} [1-9]', text), stage
    assert re.search(r"darkpose_batch_size_count [1-9]", text)
    assert re.search(r"darkpose_queue_wait_seconds_count [1-9]", text)
    assert re.search(r"darkpose_persons_per_image_count [1-9]", text)
    assert 'darkpose_model_info{decode="dark",detector="yolox"' in text
    assert "darkpose_inflight_requests 0.0" in text


def test_each_app_has_its_own_registry() -> None:
    from darkpose.service.api import create_app

    a = create_app(api_settings(warmup=False))
    b = create_app(api_settings(warmup=False))
    assert a.state.service.metrics.registry is not b.state.service.metrics.registry


def test_not_ready_before_models_are_loaded() -> None:
    """Before the lifespan has loaded the models, /readyz and /pose are 503 (our JSON shape)."""
    from darkpose.service.api import create_app

    app = create_app(api_settings(model_dir="/nonexistent-dir"))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        deadline = time.monotonic() + 20
        while app.state.service.load_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_ready"
        assert "failed load" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "1"
        r = c.post("/pose", content=b"x", headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503


def test_readyz_is_503_until_warm_up_finishes(jpeg_bytes: bytes) -> None:
    """Warm-up runs the pose model; while it is held, /readyz and /pose say 503 not_ready."""
    from darkpose.service.api import create_app
    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.runtime.factory import build_detector
    from tests.api.tiny_model import TinyOnnxPoseModel

    s = api_settings(warmup=True)
    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    app = create_app(s, pipeline=Pipeline(build_detector(s), model))
    with TestClient(app, raise_server_exceptions=False) as c:
        try:
            assert model.entered.wait(30), "expected the warm-up inside the pose model"
            r = c.get("/readyz")
            assert r.status_code == 503
            assert r.json()["error"] == {
                "code": "not_ready",
                "message": "models: expected loaded and warmed, got still loading",
            }
            assert c.post("/pose", content=jpeg_bytes,
                          headers={"Content-Type": "image/jpeg"}).status_code == 503  # fmt: skip
            assert c.get("/healthz").status_code == 200
        finally:
            gate.set()
        wait_ready(c)
        assert c.get("/v1/models").json()["ready"] is True


def test_injected_pipeline_is_served(jpeg_bytes: bytes) -> None:
    """create_app(pipeline=...) serves a pre-built Pipeline as it is (no batcher added)."""
    from darkpose.service.api import create_app
    from darkpose.service.runtime.factory import build_pipeline

    s = api_settings()
    pipeline = build_pipeline(s)
    app = create_app(s, pipeline=pipeline)
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
        assert r.json()["model"]["batching"] is False
        assert app.state.service.pipeline is pipeline
        direct = pipeline(imdecode(jpeg_bytes))
        got = np.array([p["keypoints"] for p in r.json()["persons"]])
        want = direct.keypoints.reshape(len(direct), -1)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_injected_micro_batcher_shows_as_batching_enabled() -> None:
    """model_info's batching.enabled comes from the pipeline's pose models, so a MicroBatcher
    in an injected pipeline counts (it once read only the batchers the app built itself)."""
    from darkpose.service.api.state import ServiceState
    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.runtime.batching import MicroBatcher
    from tests.api.tiny_model import TinyOnnxPoseModel

    s = api_settings(warmup=False)
    tiny = TinyOnnxPoseModel()
    batcher = MicroBatcher(tiny, max_batch=2, max_wait_ms=0.0, queue_size=4)
    try:
        on = ServiceState(s, Pipeline(None, batcher))
        off = ServiceState(s, Pipeline(None, tiny))
        assert on.batchers == [] and on.model_info().batching.enabled is True
        assert on.response_model_info()["batching"] is True
        assert off.model_info().batching.enabled is False
        assert ServiceState(s).model_info().batching.enabled is False  # not loaded yet
    finally:
        batcher.close()


def test_pose_work_does_not_block_the_event_loop(jpeg_bytes: bytes) -> None:
    """While a request waits inside the pose model, /healthz still answers; with
    max_inflight_requests=1 a second /pose is refused 503 + Retry-After."""
    from darkpose.service.api import create_app
    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.runtime.factory import build_detector
    from tests.api.tiny_model import TinyOnnxPoseModel

    s = api_settings(max_inflight_requests=1, warmup=False, retry_after_s=2.0)
    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    app = create_app(s, pipeline=Pipeline(build_detector(s), model))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        results: dict[str, int] = {}

        def slow() -> None:
            r = c.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
            results["slow"] = r.status_code

        t = threading.Thread(target=slow)
        t.start()
        try:
            assert model.entered.wait(30), "expected the request inside the pose model"
            assert c.get("/healthz").status_code == 200
            assert model.active == 1  # answered while the worker thread is still blocked
            r = c.post("/pose", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "overloaded"
            assert r.headers["retry-after"] == "2"
            assert "darkpose_inflight_requests 1.0" in c.get("/metrics").text
        finally:
            gate.set()
            t.join(30)
        assert results["slow"] == 200


def test_unexpected_exception_is_500_json_with_request_id(
    jpeg_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    from darkpose.service.api import create_app
    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.runtime.factory import build_detector
    from tests.api.tiny_model import TinyOnnxPoseModel

    s = api_settings(warmup=False)
    model = TinyOnnxPoseModel(fail=True)
    app = create_app(s, pipeline=Pipeline(build_detector(s), model))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        r = c.post(
            "/pose",
            content=jpeg_bytes,
            headers={"Content-Type": "image/jpeg", "X-Request-ID": "boom-1"},
        )
        assert r.status_code == 500
        assert r.headers["x-request-id"] == "boom-1"
        body = r.json()
        assert body["request_id"] == "boom-1"
        assert body["error"]["code"] == "internal_error"
        assert "boom-1" in body["error"]["message"]
        logged = [r for r in caplog.records if "boom-1" in r.getMessage()]
        assert logged and logged[0].levelname == "ERROR" and logged[0].exc_info is not None
        # still serving
        model.fail = False
        assert c.post("/pose", content=jpeg_bytes,
                      headers={"Content-Type": "image/jpeg"}).status_code == 200  # fmt: skip
