"""Hostile input and slow clients against a real ``darkpose serve`` on 127.0.0.1.

Every attack is generated here (tests/hostile_payloads.py); limits are set small through
settings so each test is quick.  One server (``srv``) serves most tests; the shutdown and
descriptor-limit tests start their own.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import hostile_payloads as hp
from tests.api.conftest import CROWD_IMAGE, PINNED_ENV, ServerProcess, running_server
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.slow

JPEG = CROWD_IMAGE.read_bytes()
MAX_IMAGE_BYTES = 12 * 1024 * 1024
SETTINGS = {
    "DARKPOSE_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
    "DARKPOSE_MAX_INFLIGHT_REQUESTS": "2",
    "DARKPOSE_MAX_CONCURRENT_UPLOADS": "16",
    "DARKPOSE_REQUEST_TIMEOUT_S": "5",
    "DARKPOSE_HEADER_TIMEOUT_S": "1",
    "DARKPOSE_RESPONSE_WRITE_TIMEOUT_S": "1",
    "DARKPOSE_MAX_RENDER_SIDE": "2048",
    "DARKPOSE_MAX_CONNECTIONS": "40",
    "DARKPOSE_MEMORY_BUDGET_MB": "200",
    "DARKPOSE_MAX_JPEG_SCANS": "100",
    "DARKPOSE_MAX_PNG_CHUNKS": "20000",
    **PINNED_ENV,  # the memory budget above holds their legal requests without the flip test
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running_server(env=SETTINGS, log=log, log_level="INFO") as server:
        yield server


# --- helpers ------------------------------------------------------------------------------------
def _connect(port: int, timeout: float = 30.0, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def _head(port: int, length: int | None, ctype: str = "image/jpeg", query: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    chunked = "" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST /pose{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
        f"{size}{chunked}Connection: close\r\n\r\n"
    ).encode()


def _read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _post(
    srv: ServerProcess, data: bytes, ctype: str = "image/jpeg", query: str = ""
) -> httpx.Response:
    return httpx.post(
        f"{srv.base}/pose{query}", content=data, headers={"Content-Type": ctype}, timeout=60
    )


def _error(r: httpx.Response, status: int, code: str, needle: str = "") -> None:
    assert r.status_code == status, r.text[:400]
    body = r.json()
    assert body["error"]["code"] == code, body
    assert needle in body["error"]["message"], body["error"]["message"]
    assert body["request_id"] == r.headers["x-request-id"]


def _metric(base: str, name: str, labels: str = "") -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _served(srv: ServerProcess) -> None:
    r = _post(srv, JPEG)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["persons"]


def _wait_metric(
    base: str, name: str, value: float, labels: str = "", timeout: float = 30.0
) -> None:
    """Poll ``/metrics`` until ``name{labels}`` equals ``value`` (a state the server reached,
    instead of a sleep that a loaded machine may outlast)."""
    deadline = time.monotonic() + timeout
    while (got := _metric(base, name, labels)) != value:
        assert time.monotonic() < deadline, f"expected {name}{labels} == {value}, got {got}"
        time.sleep(0.05)


def _wait_inflight(srv: ServerProcess, n: int) -> None:
    """Wait until ``n`` requests are in the /pose handler (uploads included)."""
    _wait_metric(srv.base, "darkpose_inflight_requests", float(n))


def _wait_inflight_zero(srv: ServerProcess, timeout: float = 20.0) -> None:
    _wait_metric(srv.base, "darkpose_inflight_requests", 0.0, timeout=timeout)


# --- 1. decode-time CPU bomb, deadline ------------------------------------------------------------
def test_jpeg_scan_bomb_is_refused_before_decoding(srv: ServerProcess) -> None:
    bomb = hp.jpeg_scan_bomb(2048, 400)
    assert len(bomb) < 40_000
    _error(_post(srv, bomb), 413, "payload_too_large", "expected at most 100")
    _served(srv)


def test_work_past_the_deadline_is_503_with_retry_after() -> None:
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from tests.api.conftest import api_settings, wait_ready

    app = create_app(api_settings(work_timeout_s=0.001))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        r = client.post("/pose", content=JPEG, headers={"Content-Type": "image/jpeg"})
        _error(r, 503, "deadline_exceeded", "work_timeout_s")
        assert int(r.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 20
        while app.state.service.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.service.inflight == 0  # the worker stopped and gave its slot back


# --- 2. abandoned work ----------------------------------------------------------------------------
def test_abandoned_request_stops_before_the_models(srv: ServerProcess) -> None:
    slow = hp.jpeg_scan_bomb(4096, 99)  # 100 scans: within the limits, ~1 s to decode
    detect = '{stage="detect"}'
    gone = '{route="/pose",status="400"}'  # client_disconnected
    detect_before = _metric(srv.base, "darkpose_stage_seconds_count", detect)
    gone_before = _metric(srv.base, "darkpose_requests_total", gone)
    s = _connect(srv.port)
    s.sendall(_head(srv.port, len(slow)) + slow)
    _wait_metric(srv.base, "darkpose_work_running", 1.0)  # the body has arrived; decoding
    s.close()
    _wait_inflight_zero(srv)
    # counted once the middleware is done with it, which may be just after the gauge drops
    _wait_metric(srv.base, "darkpose_requests_total", gone_before + 1, gone)
    _wait_metric(srv.base, "darkpose_work_running", 0.0)  # the worker has stopped
    assert _metric(srv.base, "darkpose_stage_seconds_count", detect) == detect_before
    _served(srv)


# --- 3. memory-aware admission ------------------------------------------------------------------
def test_request_over_the_memory_budget_is_refused_before_decoding(srv: ServerProcess) -> None:
    webp = hp.webp_lossless(4500)  # ~200 bytes on the wire, 20 MP decoded: 220+ MB to decode
    assert len(webp) < 10_000
    _error(_post(srv, webp, "image/webp"), 413, "payload_too_large", "memory_budget_mb")
    _served(srv)


# --- 4. slow uploads do not take the work slots -------------------------------------------------
def test_slow_uploads_do_not_starve_real_requests(srv: ServerProcess) -> None:
    socks = []
    try:
        for _ in range(4):  # twice max_inflight_requests
            s = _connect(srv.port)
            s.sendall(_head(srv.port, len(JPEG)) + JPEG[:2])
            socks.append(s)
        _wait_inflight(srv, 4)  # all four are in the handler, waiting for their bodies
        _served(srv)
    finally:
        for s in socks:
            s.close()
    _wait_inflight_zero(srv)  # their upload slots are free again for the next test


def test_uploads_beyond_their_cap_are_503(srv: ServerProcess) -> None:
    socks = []
    try:
        for _ in range(16):  # max_concurrent_uploads
            s = _connect(srv.port)
            s.sendall(_head(srv.port, len(JPEG)) + JPEG[:2])
            socks.append(s)
        _wait_inflight(srv, 16)  # every upload slot is taken
        r = _post(srv, JPEG)
        _error(r, 503, "overloaded", "uploads in progress: expected at most 16")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        for s in socks:
            s.close()
    _wait_inflight_zero(srv)  # the server has seen the clients go and freed their slots
    _served(srv)


# --- 5. slow readers ------------------------------------------------------------------------------
def test_render_is_downscaled_to_max_render_side(srv: ServerProcess) -> None:
    big = hp.noisy_jpeg(3000, 2000)
    r = _post(srv, big, query="?render=true&render_format=png")
    assert r.status_code == 200, r.text[:300]
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(r.content[16:20], "big"), int.from_bytes(r.content[20:24], "big")
    assert (width, height) == (2048, 1365)


def test_unread_response_is_cut_after_the_write_timeout(srv: ServerProcess) -> None:
    big = hp.noisy_jpeg(3000, 2000, seed=1)
    cut = "response unread for"  # the server's INFO line when it aborts a connection
    cuts_before = srv.log_text().count(cut)
    s = _connect(srv.port, rcvbuf=4096)
    try:
        s.sendall(_head(srv.port, len(big), query="?render=true&render_format=png") + big)
        # reading nothing until the server says it gave up (work + write timeout), however
        # long a loaded machine takes for the work
        deadline = time.monotonic() + 60
        while srv.log_text().count(cut) == cuts_before:
            assert time.monotonic() < deadline, "expected the write timeout to cut the reader"
            time.sleep(0.1)
        data = _read_all(s)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"content-length: (\d+)", head, re.I)
    assert m is not None, head[:200]
    assert len(body) < int(m.group(1))  # the server gave up on this reader
    _served(srv)


# --- 6. the event loop stays free -----------------------------------------------------------------
def test_near_boundary_multipart_does_not_stall_healthz(srv: ServerProcess) -> None:
    body, ctype = hp.near_boundary_multipart(8 * 1024 * 1024)
    worst = [0.0]
    results: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                c.get(srv.base + "/healthz")
                worst[0] = max(worst[0], time.perf_counter() - t0)
                time.sleep(0.01)

    def attack() -> None:
        r = httpx.post(
            srv.base + "/pose", content=body, headers={"Content-Type": ctype}, timeout=60
        )
        results.append(r.status_code)

    prober = threading.Thread(target=probe)
    prober.start()
    t0 = time.perf_counter()
    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join()
    attack_s = time.perf_counter() - t0
    stop.set()
    prober.join()
    # parsed on the loop, each body blocked /healthz for most of the attack
    assert worst[0] < attack_s / 3, (worst[0], attack_s)
    assert results == [400, 400, 400]  # parsed (not an image), answered


def test_one_byte_chunks_are_cut(srv: ServerProcess) -> None:
    s = _connect(srv.port, timeout=10)
    try:
        s.sendall(_head(srv.port, None))
        try:
            for _ in range(10):
                s.sendall(b"1\r\nx\r\n" * 500)
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_all(s)
    finally:
        s.close()
    assert data == b""  # closed without an answer, not a 408 after the body timeout
    _served(srv)


# --- 7. connection limits -------------------------------------------------------------------------
def test_idle_connection_is_closed_after_the_header_timeout(srv: ServerProcess) -> None:
    s = _connect(srv.port, timeout=6)
    try:
        s.sendall(b"POST /pose HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        t0 = time.perf_counter()
        data = _read_all(s)
        waited = time.perf_counter() - t0
    finally:
        s.close()
    assert data == b""
    assert waited < 5.5  # closed by the server, not by our own socket timeout


def test_idle_connections_beyond_the_cap_are_evicted_for_real_ones(srv: ServerProcess) -> None:
    socks = [_connect(srv.port) for _ in range(60)]  # cap: 40
    closed: set[socket.socket] = set()

    def n_closed() -> int:
        """How many of ``socks`` the server has closed so far (EOF or reset)."""
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.05)
        for s in readable:
            try:
                if s.recv(1) == b"":
                    closed.add(s)
            except ConnectionResetError:
                closed.add(s)
        return len(closed)

    try:
        # 60 opened, at most 40 held: the server's state, not a guess at how long it takes
        wait_until(lambda: n_closed() >= 20, what="20 of the 60 idle connections closed")
        _served(srv)  # a real request is served: an idle connection made room
    finally:
        for s in socks:
            s.close()


# --- 8. corrupt JPEGs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "make", "needle"),
    [
        ("truncated + EOI", lambda: hp.truncated_jpeg_with_eoi(JPEG), "ends before the image"),
        ("header only, 6324x6324", hp.jpeg_header_only, "0 bytes of scan data"),
    ],
)
def test_corrupt_jpegs_are_invalid_image(srv: ServerProcess, name: str, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    data = make()
    _error(_post(srv, data), 400, "invalid_image", needle)


# --- 9. leaks and small issues --------------------------------------------------------------------
def test_models_listing_shows_no_absolute_paths(srv: ServerProcess) -> None:
    info = httpx.get(srv.base + "/v1/models", timeout=10).json()
    for m in info["pose_models"]:
        assert "/" not in m["path"] and m["path"].endswith(".onnx"), m["path"]


def test_no_redirect_built_from_the_host_header(srv: ServerProcess) -> None:
    r = httpx.post(
        srv.base + "/pose/",
        content=JPEG,
        headers={"Content-Type": "image/jpeg", "Host": "evil.example.com"},
        timeout=30,
    )
    assert r.status_code == 404
    assert "location" not in r.headers
    assert r.json()["error"]["code"] == "not_found"


def test_multipart_image_without_filename_is_served(srv: ServerProcess) -> None:
    body, ctype = hp.multipart_without_filename(JPEG)
    r = _post(srv, body, ctype)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["persons"]


@pytest.mark.parametrize(
    ("name", "make", "status", "code", "needle"),
    [
        ("negative-width BMP", hp.bmp_negative_width, 400, "invalid_image", "got -64"),
        ("RLE8 BMP", hp.bmp_rle8, 415, "unsupported_media_type", "RLE8"),
        ("PNG of 30000 chunks", hp.png_many_chunks, 413, "payload_too_large", "20000 chunks"),
    ],
)
def test_costly_or_odd_encodings_are_refused(
    srv: ServerProcess,
    name: str,
    make,
    status: int,
    code: str,
    needle: str,  # type: ignore[no-untyped-def]
) -> None:
    _error(_post(srv, make(), "application/octet-stream"), status, code, needle)


def test_shutdown_past_the_grace_period_answers_json_503(tmp_path: Path) -> None:
    server = ServerProcess(log=tmp_path / "s.log", args=["--graceful-timeout", "1"])
    s: socket.socket | None = None
    try:
        server.wait_ready()
        s = _connect(server.port)
        s.sendall(_head(server.port, len(JPEG)) + JPEG[:1000])  # an upload in progress
        _wait_metric(server.base, "darkpose_inflight_requests", 1.0)
        server.proc.send_signal(signal.SIGTERM)
        data = _read_all(s)
    finally:
        if s is not None:
            s.close()
        server.terminate()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), data[:300]
    assert re.search(rb"x-request-id: \S+", head, re.I)
    assert json.loads(body)["error"]["code"] == "shutting_down"


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


def test_descriptor_limit_causes_no_accept_error_storm(tmp_path: Path) -> None:
    # asyncio's own loop, as in the Docker image (no uvloop): it logs a traceback per failed
    # accept() and retries at once (~70 000 lines in 3 s before the connection cap)
    stub = tmp_path / "no_uvloop"
    stub.mkdir()
    (stub / "uvloop.py").write_text('raise ImportError("uvloop hidden by the test")\n')
    log = tmp_path / "s.log"
    env = {"PYTHONPATH": f"{stub}{os.pathsep}{REPO}"}
    server = ServerProcess(env=env, log=log, preexec_fn=_low_fd_limit)
    socks: list[socket.socket] = []
    try:
        server.wait_ready()
        for _ in range(300):
            try:
                socks.append(_connect(server.port, timeout=1))
            except OSError:
                break
        # the server has accepted past its descriptor-derived cap (its warning says so)
        wait_until(
            lambda: "connections: expected at most" in server.log_text(),
            what="the connection-cap warning in the log",
        )
        for s in socks:
            s.close()
        socks.clear()
        # accepted after every connection above (one listen backlog, first in first out)
        r = httpx.post(
            server.base + "/pose", content=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=60
        )
        assert r.status_code == 200
    finally:
        for s in socks:
            s.close()
        server.terminate()
    text = log.read_text(errors="replace")
    # at most one accept error per 10 s gets through (bursts may still hit the limit)
    assert text.count("out of system resource") <= 2, text[-2000:]


def test_full_pose_queue_is_refused_before_detection() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from darkpose.service.core.pipeline import Pipeline
    from darkpose.service.runtime.batching import MicroBatcher
    from darkpose.service.runtime.factory import build_detector
    from tests.api.conftest import api_settings, wait_ready
    from tests.api.tiny_model import TINY_IN, TinyOnnxPoseModel

    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0.0, queue_size=4)
    settings = api_settings(warmup=False)
    app = create_app(settings, pipeline=Pipeline(build_detector(settings), batcher))
    crops = np.zeros((2, 3, TINY_IN[1], TINY_IN[0]), np.float32)
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            wait_ready(client)
            pool.submit(batcher.infer, crops)  # held by the batcher thread (gate closed)
            assert model.entered.wait(5.0)
            for _ in range(2):
                pool.submit(batcher.infer, crops)
            deadline = time.monotonic() + 5
            while batcher.pending < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert batcher.pending == 4
            r = client.post("/pose", content=JPEG, headers={"Content-Type": "image/jpeg"})
            _error(r, 503, "overloaded", "up to")  # the early check, not the batcher's own
            metrics = client.get("/metrics").text
            assert not re.search(r'darkpose_stage_seconds_count\{stage="detect"\} [1-9]', metrics)
    finally:
        gate.set()
        batcher.close()
        pool.shutdown()


def test_app_serves_again_after_its_lifespan_restarts() -> None:
    """close() shuts the worker pool and the batchers; a second start (another test client,
    schemathesis' phases) makes new ones instead of answering 503/500."""
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from tests.api.conftest import api_settings, wait_ready

    app = create_app(api_settings())
    for _ in range(2):
        with TestClient(app, raise_server_exceptions=False) as client:
            wait_ready(client)
            r = client.post("/pose", content=JPEG, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200, r.text[:300]
    assert app.state.service.load_error is None
