"""Access control and fair use on a real uvicorn (``darkpose serve`` subprocesses).

Server ``keyed``: API keys (inline + file), a metrics key, a token bucket and a per-client
concurrency cap.  Server ``open``: no keys, bound to 0.0.0.0, a concurrency cap per client IP
and ``X-Forwarded-For`` trusted from 127.0.0.2 only.  A greedy client holds its slots with
uploads that never finish (no timing assumptions); refusals must arrive without the body.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from darkpose.service.api.access_control import key_id as _key_id
from tests.api.conftest import CROWD_IMAGE, ServerProcess, read_response, running_server
from tests.conftest import wait_until

pytestmark = pytest.mark.slow

JPEG = CROWD_IMAGE.read_bytes()
#: Fresh random keys per run, so "no key in any log line" cannot pass by accident.
_NAMES = ("inline", "alice", "bob", "carol", "dave", "greedy", "polite", "rotated", "metrics")
KEYS = {name: f"{name}-{secrets.token_hex(12)}" for name in _NAMES}
RATE_BURST = 4
#: The servers' DARKPOSE_KEY_ID_SECRET: the ids in their logs and metrics are computable here.
ID_SECRET = secrets.token_hex(16)
AUTH_FAILURE_BURST = 50  # the refusals of these tests, all from 127.0.0.1, stay under it


def key_id(key: str) -> str:
    return _key_id(key, ID_SECRET.encode())


def _write_keys(path: Path, names: list[str]) -> None:
    """Replace the key file atomically (as a secret mount or an editor does)."""
    tmp = path.with_suffix(".tmp")
    lines = ["# API keys of the access tests", ""]
    lines += [f"{KEYS[n]}   # {n}" for n in names]
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _auth(name: str, how: str = "bearer") -> dict[str, str]:
    if how == "bearer":
        return {"Authorization": f"Bearer {KEYS[name]}"}
    return {"X-API-Key": KEYS[name]}


def _open_upload(
    port: int, headers: dict[str, str], *, source: str = "127.0.0.1", length: int = 500_000
) -> socket.socket:
    """A POST /pose whose body never finishes: headers + 16 bytes, then silence."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall(
        (
            f"POST /pose HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n"
        ).encode()
        + JPEG[:16]
    )
    return s


def _headers_only(
    port: int, headers: dict[str, str], *, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """POST /pose announcing a 500 kB body and sending none: only a refusal made before the
    body is read can answer (otherwise the server waits for the body and this times out)."""
    s = _open_upload(port, {**headers, "Connection": "close"}, source=source)
    try:
        return read_response(s)
    finally:
        s.close()


def _metric(base: str, name: str, labels: str, key: str | None = None) -> float:
    hdrs = {"X-API-Key": key} if key else {}
    text = httpx.get(base + "/metrics", headers=hdrs, timeout=10).text
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _assert_error_shape(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"].startswith("expected") or "expected" in body["error"]["message"]
    assert body["request_id"] == r.headers["x-request-id"]


def _serve(
    tmp_path_factory: pytest.TempPathFactory, name: str, log_level: str, env: dict[str, str]
) -> Iterator[ServerProcess]:
    """A ready server of this module (no warm-up, 60 s request timeout, ``env`` on top) that
    logs at ``log_level`` into a fresh folder ``name``."""
    with running_server(
        env={"DARKPOSE_REQUEST_TIMEOUT_S": "60", "DARKPOSE_WARMUP": "false", **env},
        log=tmp_path_factory.mktemp(name) / "server.log",
        log_level=log_level,
    ) as server:
        yield server


# --- server with keys -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "api_keys"
    _write_keys(path, ["alice", "bob", "carol", "dave", "greedy", "polite"])
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, keyfile: Path) -> Iterator[ServerProcess]:
    yield from _serve(
        tmp_path_factory,
        "keyed",
        "DEBUG",
        {
            "DARKPOSE_API_KEYS": KEYS["inline"],
            "DARKPOSE_API_KEYS_FILE": str(keyfile),
            "DARKPOSE_METRICS_KEY": KEYS["metrics"],
            "DARKPOSE_KEY_ID_SECRET": ID_SECRET,
            "DARKPOSE_AUTH_FAILURE_RATE": "0.2",
            "DARKPOSE_AUTH_FAILURE_BURST": str(AUTH_FAILURE_BURST),
            "DARKPOSE_RATE_LIMIT": "0.5",
            "DARKPOSE_RATE_BURST": str(RATE_BURST),
            "DARKPOSE_MAX_INFLIGHT_PER_CLIENT": "2",
            "DARKPOSE_LOG_LEVEL": "debug",
        },
    )


def test_probes_stay_open(keyed: ServerProcess) -> None:
    assert httpx.get(keyed.base + "/healthz", timeout=10).status_code == 200
    assert httpx.get(keyed.base + "/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="darkpose"'),
        ({"Authorization": "Bearer not-a-key"}, 'Bearer realm="darkpose", error="invalid_token"'),
        ({"X-API-Key": "not-a-key"}, 'Bearer realm="darkpose", error="invalid_token"'),
        ({"Authorization": f"Basic {KEYS['alice']}"}, 'Bearer realm="darkpose"'),
    ],
)
@pytest.mark.parametrize("route", ["/pose", "/v1/models"])
def test_no_or_wrong_key_is_401(
    keyed: ServerProcess, headers: dict[str, str], challenge: str, route: str
) -> None:
    if route == "/pose":
        r = httpx.post(
            keyed.base + route,
            content=JPEG,
            headers={"Content-Type": "image/jpeg", **headers},
            timeout=30,
        )
    else:
        r = httpx.get(keyed.base + route, headers=headers, timeout=30)
    _assert_error_shape(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == challenge


def test_401_is_answered_before_the_body(keyed: ServerProcess) -> None:
    status, headers, body = _headers_only(keyed.port, {"X-API-Key": "wrong"})
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert b'"unauthorized"' in body


@pytest.mark.parametrize(("name", "how"), [("alice", "bearer"), ("bob", "x-api-key")])
def test_right_key_is_served(keyed: ServerProcess, name: str, how: str) -> None:
    r = httpx.post(
        keyed.base + "/pose",
        content=JPEG,
        headers={"Content-Type": "image/jpeg", **_auth(name, how)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["persons"]
    m = httpx.get(keyed.base + "/v1/models", headers=_auth(name, how), timeout=10)
    assert m.status_code == 200 and m.json()["ready"] is True


def test_inline_key_is_served(keyed: ServerProcess) -> None:
    assert httpx.get(keyed.base + "/v1/models", headers=_auth("inline"), timeout=10).is_success


def test_metrics_behind_their_key(keyed: ServerProcess) -> None:
    r = httpx.get(keyed.base + "/metrics", timeout=10)
    _assert_error_shape(r, 401, "unauthorized")
    assert "metrics key" in r.json()["error"]["message"]
    r = httpx.get(keyed.base + "/metrics", headers=_auth("alice"), timeout=10)
    assert r.status_code == 401  # an API key is not the metrics key
    r = httpx.get(keyed.base + "/metrics", headers=_auth("metrics", "x-api-key"), timeout=10)
    assert r.status_code == 200
    assert 'darkpose_unauthorized_total{reason="missing"}' in r.text
    assert 'darkpose_requests_total{route="/pose",status="401"}' in r.text
    clients = set(re.findall(r'client="([^"]*)"', r.text))
    assert clients and clients <= {key_id(k) for k in KEYS.values()}, clients
    assert "127.0.0.1" not in r.text


def test_rate_limit_is_429_with_retry_after(keyed: ServerProcess) -> None:
    statuses = []
    r = None
    for _ in range(RATE_BURST + 4):  # the burst, then (at 0.5/s) a refusal
        r = httpx.get(keyed.base + "/v1/models", headers=_auth("carol"), timeout=10)
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
    assert r is not None and statuses[-1] == 429, statuses
    assert statuses.count(200) >= RATE_BURST
    _assert_error_shape(r, 429, "too_many_requests")
    assert int(r.headers["retry-after"]) >= 1
    assert "rate limit" in r.json()["error"]["message"]
    status, headers, body = _headers_only(keyed.port, _auth("carol"))  # before the body
    assert status == 429 and int(headers["retry-after"]) >= 1 and b"rate limit" in body
    # another key is not affected by carol's bucket
    assert httpx.get(keyed.base + "/v1/models", headers=_auth("alice"), timeout=10).is_success
    assert (
        _metric(
            keyed.base,
            "darkpose_client_throttled_total",
            f'client="{key_id(KEYS["carol"])}",reason="rate"',
            KEYS["metrics"],
        )
        >= 2
    )


def test_greedy_client_at_its_cap_while_another_is_served(keyed: ServerProcess) -> None:
    gid = key_id(KEYS["greedy"])
    held = [_open_upload(keyed.port, _auth("greedy")) for _ in range(2)]
    try:
        wait_until(
            lambda: (
                _metric(keyed.base, "darkpose_client_inflight", f'client="{gid}"', KEYS["metrics"])
                == 2
            ),
            what="greedy's two uploads in flight",
        )
        status, headers, body = _headers_only(keyed.port, _auth("greedy"))
        assert status == 429, body
        assert int(headers["retry-after"]) >= 1
        assert b"too many requests in flight" in body
        r = httpx.post(
            keyed.base + "/pose",
            content=JPEG,
            headers={"Content-Type": "image/jpeg", **_auth("polite")},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["persons"]
    finally:
        for s in held:
            s.close()
    wait_until(
        lambda: (
            httpx.get(keyed.base + "/v1/models", headers=_auth("greedy"), timeout=10).status_code
            == 200
        ),
        what="greedy served again once its uploads are gone",
    )
    assert (
        _metric(
            keyed.base,
            "darkpose_client_throttled_total",
            f'client="{gid}",reason="concurrency"',
            KEYS["metrics"],
        )
        >= 1
    )


def test_key_file_reload_on_sighup_and_on_change(keyed: ServerProcess, keyfile: Path) -> None:
    def status(name: str) -> int:
        return httpx.get(keyed.base + "/v1/models", headers=_auth(name), timeout=10).status_code

    assert status("rotated") == 401
    assert status("dave") == 200
    # SIGHUP: rotated in, dave out (mtime granularity does not matter: the signal forces it)
    _write_keys(keyfile, ["alice", "bob", "carol", "greedy", "polite", "rotated"])
    keyed.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: status("rotated") == 200, what="the rotated key accepted after SIGHUP")
    assert status("dave") == 401
    assert status("inline") == 200  # inline keys survive reloads
    # a change without a signal is noticed too (the file is checked about once a second)
    _write_keys(keyfile, ["alice", "bob", "carol", "dave", "greedy", "polite"])
    wait_until(lambda: status("dave") == 200, what="dave accepted again after the file changed")
    wait_until(lambda: status("rotated") == 401, what="the rotated key refused again")
    # a broken file keeps the keys in force
    keyfile.write_text("two words\n")
    keyed.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "API keys not reloaded (SIGHUP)" in keyed.log_text(),
        what="the broken file reported",
    )
    assert status("alice") == 200


def test_no_key_in_any_log_line(keyed: ServerProcess) -> None:
    """Runs last against ``keyed``: every key above has been used, rejected or reloaded."""
    assert keyed.log_path is not None
    text = keyed.log_path.read_text(errors="replace")
    assert "API keys reloaded (SIGHUP)" in text
    assert key_id(KEYS["greedy"]) in text  # the 429 log names the client by its id
    assert "401 missing API key" in text
    for name, key in KEYS.items():
        assert key not in text, f"the {name} key appears in the server log"
        assert key.split("-", 1)[1] not in text


# --- server without keys --------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(
        tmp_path_factory,
        "open",
        "INFO",
        {
            "DARKPOSE_HOST": "0.0.0.0",
            "DARKPOSE_MAX_INFLIGHT_PER_CLIENT": "1",
            "DARKPOSE_TRUSTED_PROXIES": "127.0.0.2",
        },
    )


def test_open_server_warns_once_and_serves_without_keys(open_srv: ServerProcess) -> None:
    assert open_srv.log_path is not None
    text = open_srv.log_path.read_text(errors="replace")
    assert text.count("without API keys") == 1, text
    r = httpx.post(
        open_srv.base + "/pose", content=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert r.status_code == 200 and r.json()["persons"]
    assert httpx.get(open_srv.base + "/metrics", timeout=10).status_code == 200


def test_forwarded_for_only_from_trusted_proxies(open_srv: ServerProcess) -> None:
    port = open_srv.port

    def inflight() -> float:
        return _metric(open_srv.base, "darkpose_client_inflight", 'client="anonymous"')

    def get_from(source: str, forwarded_for: str) -> int:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source)) as c:
            r = c.get(
                open_srv.base + "/v1/models",
                headers={"X-Forwarded-For": forwarded_for},
                timeout=10,
            )
        return r.status_code

    # from 127.0.0.1 (not a trusted proxy): the header is ignored, the client is 127.0.0.1
    held = _open_upload(port, {"X-Forwarded-For": "10.0.0.1"})
    try:
        wait_until(lambda: inflight() == 1, what="one upload in flight")
        status, _, body = _headers_only(port, {"X-Forwarded-For": "10.0.0.2"})
        assert status == 429, body
        # from the trusted proxy 127.0.0.2: each forwarded client has its own cap
        assert get_from("127.0.0.2", "10.0.0.1") == 200
        held2 = _open_upload(port, {"X-Forwarded-For": "10.0.0.3"}, source="127.0.0.2")
        try:
            wait_until(lambda: inflight() == 2, what="two uploads in flight")
            # a spoofed left part is ignored: still client 10.0.0.3, at its cap
            assert get_from("127.0.0.2", "198.51.100.7, 10.0.0.3") == 429
            assert get_from("127.0.0.2", "10.0.0.4") == 200
        finally:
            held2.close()
    finally:
        held.close()
    text = httpx.get(open_srv.base + "/metrics", timeout=10).text
    assert 'darkpose_client_throttled_total{client="anonymous",reason="concurrency"}' in text
    for ip in ("10.0.0.1", "10.0.0.3", "127.0.0.2", "198.51.100.7"):
        assert ip not in text
