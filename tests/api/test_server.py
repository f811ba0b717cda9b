"""A real uvicorn (``darkpose serve`` in a subprocess on 127.0.0.1) and raw sockets: slow and
aborted uploads, Content-Length limits, request timeout, graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import CROWD_IMAGE, ServerProcess, read_response, running_server
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

JPEG = CROWD_IMAGE.read_bytes()


def _headers(port: int, length: int, ctype: str = "image/jpeg", extra: str = "") -> bytes:
    return (
        f"POST /pose HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    ).encode()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.settimeout(60)
    return s


def _inflight(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    m = re.search(r"^darkpose_inflight_requests ([0-9.]+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def _good_request_works(base: str) -> None:
    r = httpx.post(base + "/pose", content=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["persons"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(
        env={"DARKPOSE_MAX_IMAGE_BYTES": str(3 * 1024 * 1024), "DARKPOSE_REQUEST_TIMEOUT_S": "2"},
        log=log,
    ) as server:
        yield server


def test_aborted_upload_leaves_the_server_serving(srv: ServerProcess) -> None:
    for _ in range(3):
        s = _connect(srv.port)
        s.sendall(_headers(srv.port, len(JPEG)) + JPEG[: len(JPEG) // 2])
        wait_until(lambda: _inflight(srv.base) == 1.0, what="the upload in the /pose handler")
        s.close()  # half a body, then gone
    _good_request_works(srv.base)
    wait_until(lambda: _inflight(srv.base) == 0.0, timeout=10, what="no request in flight")
    assert srv.proc.poll() is None


def test_slow_upload_within_the_timeout_succeeds(srv: ServerProcess) -> None:
    s = _connect(srv.port)
    try:
        s.sendall(_headers(srv.port, len(JPEG)))
        step = len(JPEG) // 8 + 1
        for i in range(0, len(JPEG), step):
            s.sendall(JPEG[i : i + step])
            time.sleep(0.05)
        status, headers, body = read_response(s)
    finally:
        s.close()
    assert status == 200, body[:300]
    assert json.loads(body)["persons"]
    assert headers["x-request-id"]


def test_stalled_upload_gets_408_then_server_serves(srv: ServerProcess) -> None:
    s = _connect(srv.port)
    try:
        s.sendall(_headers(srv.port, len(JPEG)) + JPEG[:1000])
        status, _, body = read_response(s)  # server gives up after request_timeout_s = 2
    finally:
        s.close()
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"
    _good_request_works(srv.base)


def test_content_length_over_the_limit_is_refused_before_reading(srv: ServerProcess) -> None:
    s = _connect(srv.port)
    try:
        s.sendall(_headers(srv.port, 10**9))  # declares 1 GB, sends nothing
        status, headers, body = read_response(s)
    finally:
        s.close()
    assert status == 413
    err = json.loads(body)
    assert err["error"]["code"] == "payload_too_large"
    assert "got 1000000000" in err["error"]["message"]
    assert err["request_id"] == headers["x-request-id"]
    _good_request_works(srv.base)


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    server = ServerProcess(log=tmp_path / "server.log")
    socks: list[socket.socket] = []
    try:
        server.wait_ready()
        half = len(JPEG) // 2
        for _ in range(3):
            s = _connect(server.port)
            s.sendall(_headers(server.port, len(JPEG)) + JPEG[:half])
            socks.append(s)
        wait_until(lambda: _inflight(server.base) == 3.0, timeout=20, what="3 uploads in flight")
        server.proc.send_signal(signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 20
        while not refused and time.monotonic() < deadline:
            try:  # new connections stop being accepted soon after SIGTERM
                httpx.get(server.base + "/healthz", timeout=2)
                time.sleep(0.1)
            except httpx.HTTPError:
                refused = True
        assert refused
        assert server.proc.poll() is None  # still finishing the in-flight requests
        statuses = []
        for s in socks:
            s.sendall(JPEG[half:])
            status, _, body = read_response(s)
            statuses.append(status)
            assert json.loads(body)["persons"]
        assert statuses == [200, 200, 200]
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown completes
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        for s in socks:
            s.close()
        server.terminate()


def test_serve_with_no_model_settings_answers_with_pp_tinypose(srv: ServerProcess) -> None:
    """``darkpose serve`` with no model settings: PP-TinyPose keypoints, decoded as its card
    says (DARK, blur kernel 11), the default profile's detector."""
    from darkpose.service.settings import default_of

    r = httpx.post(
        srv.base + "/pose", content=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    model = body["model"]
    assert model["pose_models"] == ["pp_tinypose_256x192"]
    assert model["detector"] == default_of("detector") == "picodet"
    assert (model["decode"], model["blur_kernel"], model["decode_in_graph"]) == ("dark", 11, False)
    assert body["persons"] and all(len(p["keypoints"]) == 51 for p in body["persons"])
