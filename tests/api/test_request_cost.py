"""A request's cost follows the parameters it may ask for; slots are held until the work stops.

* the 268-byte 8×8 noise PNG asking for ``max_persons=100&score_threshold=0&flip=true`` is
  refused at once, and at the lowest ``score_threshold`` allowed it costs no more CPU than one
  real photo on the same server at rest and leaves the RSS where the photo left it (a real
  ``darkpose serve``);
* a query whose own memory (``max_persons`` × flip) can never fit the budget is a 422 naming
  ``max_persons``; the per-stage estimate bounds what the real pipeline allocates;
* a client that hangs up keeps its per-client slot and its memory reservation until its worker
  has stopped (an in-process uvicorn whose pose model waits on a gate: no timing assumptions).
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import (
    CROWD_IMAGE,
    PINNED_ENV,
    ServerProcess,
    api_settings,
    free_port,
    running_server,
)

pytestmark = pytest.mark.slow

JPEG = CROWD_IMAGE.read_bytes()
ATTACK_QUERY = "?max_persons=100&score_threshold=0&flip=true"
#: the bounds below were measured against the API tests' pinned detector (YOLOX, no flip, 0.3)
SETTINGS = {"DARKPOSE_MEMORY_BUDGET_MB": "200", "DARKPOSE_MAX_INFLIGHT_REQUESTS": "2", **PINNED_ENV}


def noise_png(side: int = 8, seed: int = 0) -> bytes:
    """An RGB noise PNG of ``side``² pixels (8: ~270 bytes)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) / 1024.0 if m else float("nan")  # the peak: no sampling needed


def _post(base: str, data: bytes, ctype: str, query: str = "") -> httpx.Response:
    return httpx.post(
        f"{base}/pose{query}", content=data, headers={"Content-Type": ctype}, timeout=60
    )


def _error(r: httpx.Response, status: int, needle: str) -> None:
    assert r.status_code == status, r.text[:400]
    assert needle in r.json()["error"]["message"], r.json()


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with running_server(env=SETTINGS) as server:
        yield server


def _cost(srv: ServerProcess, send: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    """The answer and the server's CPU seconds while it was made."""
    pid = srv.proc.pid
    before = _cpu_seconds(pid)
    r = send()
    return r, _cpu_seconds(pid) - before


# --- attack 1: parameters that buy unbounded work ---------------------------------------------
def test_noise_png_asking_for_everything_is_refused_or_cheap(srv: ServerProcess) -> None:
    png = noise_png()
    assert len(png) < 400
    pid = srv.proc.pid
    for _ in range(2):  # at rest: warmed, arena grown by a real photo
        assert _post(srv.base, JPEG, "image/jpeg").status_code == 200
    rest, rest_cpu = _cost(srv, lambda: _post(srv.base, JPEG, "image/jpeg"))
    assert rest.status_code == 200 and rest.json()["persons"]
    rest_peak = _rss_mb(pid)

    r, cpu = _cost(srv, lambda: _post(srv.base, png, "image/png", ATTACK_QUERY))
    _error(r, 422, "'score_threshold'")  # refused before any work
    assert cpu <= rest_cpu

    # the lowest threshold allowed, flip, as many persons as this budget lets a request ask
    lowest = "?max_persons=30&score_threshold=0.05&flip=true"
    r, cpu = _cost(srv, lambda: _post(srv.base, png, "image/png", lowest))
    assert r.status_code == 200, r.text[:300]
    assert cpu <= rest_cpu  # noise holds no person: no more work than one real photo
    assert _rss_mb(pid) <= rest_peak * 1.05  # peak RSS: no N×N NMS matrix, no new arena


def test_query_that_can_never_fit_the_budget_is_422_naming_max_persons(srv: ServerProcess) -> None:
    r = _post(srv.base, JPEG, "image/jpeg", "?max_persons=100&flip=true")
    _error(r, 422, "max_persons: expected at most")
    message = r.json()["error"]["message"]
    assert "flip=true and test_paddings=none (2 crops per person" in message
    assert _post(srv.base, JPEG, "image/jpeg", "?max_persons=100").status_code == 200


def test_query_that_can_never_fit_names_the_test_paddings_that_multiply_its_crops() -> None:
    from darkpose.service.api.routes.pose import PoseQuery
    from darkpose.service.api.state import ServiceState
    from darkpose.service.core.errors import InvalidParameter

    state = ServiceState(
        api_settings(warmup=False, memory_budget_mb=300, test_paddings=[1.05, 1.25])
    )
    state.start_loading()
    try:
        assert state.wait_ready(120), state.load_error
        pipeline = state.pipeline
        assert pipeline is not None
        query = PoseQuery(flip=True, max_persons=100)
        options = pipeline.resolve_options(query.options(state.options(), 100))
        with pytest.raises(InvalidParameter) as err:
            state.check_parameters_fit(pipeline, options, False)
        message = str(err.value)
        assert "flip=true and test_paddings=1.05,1.25 (6 crops per person;" in message
        fits = int(message.split("expected at most ")[1].split()[0])
        ok = pipeline.resolve_options(
            PoseQuery(flip=True, max_persons=fits).options(state.options(), fits)
        )
        state.check_parameters_fit(pipeline, ok, False)  # the count it names does fit
    finally:
        state.close()


def test_estimate_bounds_what_the_pipeline_allocates() -> None:
    """numpy's allocations (traced) of the real service path on a 2×2 mosaic of a crowd photo,
    with flip, stay under the request's estimate."""
    import cv2

    from darkpose.service.api.routes.pose import PoseQuery, run_pose
    from darkpose.service.api.state import ServiceState
    from darkpose.service.api.work import Job

    state = ServiceState(api_settings(warmup=False, max_image_bytes=8 * 1024 * 1024))
    state.start_loading()
    assert state.wait_ready(120), state.load_error
    pipeline = state.pipeline
    assert pipeline is not None
    tile = cv2.imdecode(np.frombuffer(JPEG, np.uint8), cv2.IMREAD_COLOR)
    mosaic = np.vstack([np.hstack([tile, tile])] * 2)
    data = cv2.imencode(".jpg", mosaic)[1].tobytes()
    query = PoseQuery(flip=True, score_threshold=0.05, max_persons=24)
    options = query.options(state.options(), 24)
    reserved: list[int] = []
    reserve = state.memory.reserve
    state.memory.reserve = lambda n: (reserved.append(n), reserve(n))[1]  # type: ignore[method-assign]
    try:
        run_pose(state, pipeline, data, options, query, "warm", Job(120))
        tracemalloc.start()
        try:
            body, _ = run_pose(state, pipeline, data, options, query, "x", Job(120))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        state.close()
    assert b'"persons":[{' in body
    assert state.memory.used == 0  # released when the work stopped
    # reserved: before decoding, then the persons found; the last request's two
    held = sum(reserved[len(reserved) // 2 :])
    assert len(reserved) == 4, reserved
    assert 0 < peak <= held, f"traced {peak / 2**20:.1f} MB > {held / 2**20:.1f}"


def test_admission_reserves_the_image_first_then_the_persons_found() -> None:
    """Before decoding the admission reserves the image's part (no persons); once the detector
    has counted the persons their crops and heatmaps join it: a photo without persons never
    holds memory for ``max_persons`` crops, a crowd photo holds exactly its persons'."""
    from darkpose.service.api.routes.pose import PoseQuery, run_pose
    from darkpose.service.api.state import ServiceState
    from darkpose.service.api.work import Job
    from darkpose.service.core.io import decode_image

    state = ServiceState(api_settings(warmup=False))
    state.start_loading()
    assert state.wait_ready(120), state.load_error
    pipeline = state.pipeline
    assert pipeline is not None
    query = PoseQuery(flip=True, max_persons=20)
    options = pipeline.resolve_options(query.options(state.options(), 20))
    reserved: list[int] = []
    reserve = state.memory.reserve
    state.memory.reserve = lambda n: (reserved.append(n), reserve(n))[1]  # type: ignore[method-assign]
    blank = io.BytesIO()
    Image.new("RGB", (640, 480), (128, 128, 128)).save(blank, "JPEG")
    try:
        body, _ = run_pose(state, pipeline, blank.getvalue(), options, query, "a", Job(120))
        assert b'"persons":[]' in body
        assert len(reserved) == 1  # no person: nothing more than the image's part
        empty = state.request_cost(pipeline, options, False, 640, 480, "RGB", persons=0)
        assert reserved == [empty.total]
        reserved.clear()
        crowd = CROWD_IMAGE.read_bytes()
        with Image.open(io.BytesIO(crowd)) as im:
            w, h = im.size
        body, _ = run_pose(state, pipeline, crowd, options, query, "b", Job(120))
        image = decode_image(crowd, exif_orientation=True)
        n = len(pipeline.person_boxes(image, options)[0])  # the boxes the pose model got
        assert n >= 3 and b'"persons":[{' in body
        found = state.request_cost(pipeline, options, False, w, h, "RGB", persons=n)
        at_most = state.request_cost(pipeline, options, False, w, h, "RGB")
        assert sum(reserved) == found.total < at_most.total
        assert len(reserved) == 2
    finally:
        state.close()
    assert state.memory.used == 0


# --- attack 2: hanging up to dodge the per-client cap -------------------------------------------
def _send_and_hang_up(port: int, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(
        (
            f"POST /pose HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return s


def _wait(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"expected {what} within {timeout} s"
        time.sleep(0.02)


def test_abandoned_work_keeps_its_client_slot_and_memory_until_the_worker_stops() -> None:
    import uvicorn

    from darkpose.service.api import create_app
    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.runtime.factory import build_detector
    from tests.api.tiny_model import TinyOnnxPoseModel

    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    settings = api_settings(warmup=False, batching=False, max_inflight_per_client=2)
    app = create_app(settings, pipeline=Pipeline(build_detector(settings), model))
    state = app.state.service
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("the server up", lambda: server.started)
        _wait("the app ready", lambda: httpx.get(base + "/readyz").status_code == 200)
        socks = [_send_and_hang_up(port, JPEG) for _ in range(2)]
        _wait("both workers in the pose model", lambda: model.active == 2)
        held = state.memory.used
        assert held > 0
        for s in socks:
            s.close()
        _wait(
            "both handlers gone",
            lambda: "\ndarkpose_inflight_requests 0.0" in httpx.get(base + "/metrics").text,
        )
        # the clients left; their work has not stopped: the client's two slots are still taken
        r = _post(base, JPEG, "image/jpeg")
        _error(r, 429, "in flight")
        assert state.memory.used == held and state.inflight == 2
        assert "\ndarkpose_work_running 2.0" in httpx.get(base + "/metrics").text
        gate.set()  # the workers finish
        _wait("the slots freed", lambda: state.inflight == 0 and state.memory.used == 0)
        _wait(
            "the client's slots freed",
            lambda: (
                'darkpose_client_inflight{client="anonymous"} 0.0'
                in httpx.get(base + "/metrics").text
            ),
        )
        assert _post(base, JPEG, "image/jpeg").status_code == 200
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)
