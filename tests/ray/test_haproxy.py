"""The shipped ingress, Ray's HAProxy (Ray 2.60, ``RAY_SERVE_ENABLE_HA_PROXY=1`` and the
``RAY_SERVE_HAPROXY_*`` limits of deploy/kuberay/rayservice.yaml), in front of the ``pipeline``
topology on a real local 2-node × 1-CPU cluster: every node runs its own HAProxy (healthy, not
restarted), HAProxy forwards HTTP straight to the replicas' own HTTP servers, the answers stay
equal to the single-process service's, request heads up to the service's ``max_headers_bytes``
pass, and streamed NDJSON answers and WebSockets go through it (what the Serve configs say).

Needs the ``haproxy`` executable (Debian package ``haproxy``; the Ray image has it): skipped
without it unless ``DARKPOSE_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.conftest import IMAGES, MODELS, REPO, missing_requirement, wait_until
from tests.ray.test_cluster import _assert_same_persons, _get, _post

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

SETTINGS: dict[str, Any] = {"model_dir": str(MODELS), "intra_op_threads": 1}
N_IMAGES = 8


def shipped_haproxy_env() -> dict[str, str]:
    """The ``RAY_SERVE_*`` environment of the KubeRay pods (the image sets the same values)."""
    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    return {
        e["name"]: str(e["value"])
        for e in container["env"]
        if e["name"].startswith("RAY_SERVE_") and "value" in e
    }


def _probe_app() -> Any:
    """A tiny Serve app: ``GET /ndjson`` streams one line, holds the stream open until
    ``POST /release`` arrives, then two more; ``/ws`` is a WebSocket answering upper case."""
    from ray import serve

    release = asyncio.Event()  # one per replica (the app is pickled into each)

    async def ndjson(request: Request) -> StreamingResponse:
        async def lines() -> Any:
            yield b'{"i": 0}\n'
            await asyncio.wait_for(release.wait(), 120)
            for i in (1, 2):
                yield json.dumps({"i": i}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def do_release(request: Request) -> JSONResponse:
        release.set()
        return JSONResponse({"released": True})

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())

    api = Starlette(
        routes=[
            Route("/ndjson", ndjson),
            Route("/release", do_release, methods=["POST"]),
            WebSocketRoute("/ws", echo),
        ]
    )

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class Probe:
        pass

    return Probe.bind()  # type: ignore[attr-defined]


def _get_with_header(port: int, path: str, pad: int) -> int:
    """Status of ``GET path`` whose head carries an ``X-Pad`` header of ``pad`` bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Pad": "a" * pad})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def _post_empty(url: str) -> int:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return int(resp.status)


def _haproxy_nodes(directory: str) -> set[str]:
    """Nodes whose ``haproxy`` process runs with a config file under ``directory`` (Ray puts
    one per node in a sub-directory named after the node id)."""
    nodes: set[str] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith("haproxy") or "-f" not in argv[:-1]:
            continue
        config = Path(argv[argv.index("-f") + 1])
        if config.parent.parent == Path(directory):
            nodes.add(config.parent.name)
    return nodes


def test_haproxy_ingress_serves_pipeline_replicas_with_equal_answers() -> None:
    pytest.importorskip("ray.serve", reason="needs the optional `ray` extra (ray[serve])")
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        missing_requirement("needs the `haproxy` executable (Debian package haproxy)")
    from fastapi.testclient import TestClient
    from ray import serve

    from darkpose.service.api import create_app
    from darkpose.service.ray_app import APP_NAME, INGRESS_NAME
    from darkpose.service.ray_app.builder import build_app
    from darkpose.service.ray_app.local_cluster import local_ray_cluster
    from darkpose.service.settings import Settings

    images = [p.read_bytes() for p in sorted(IMAGES.glob("*.jpg"))[:N_IMAGES]]
    app = create_app(Settings(**SETTINGS))
    with TestClient(app) as client:
        assert app.state.service.wait_ready(120), app.state.service.load_error
        reference = [
            client.post("/pose", content=d, headers={"Content-Type": "image/jpeg"}).json()
            for d in images
        ]

    root = tempfile.mkdtemp(prefix="hapx", dir="/tmp")
    shipped = shipped_haproxy_env()
    assert shipped["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    env = {
        **shipped,
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{root}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{root}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": root,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{root}/server-state",
    }
    try:
        with local_ray_cluster(num_nodes=2, cpus_per_node=1, env=env) as lr:
            options = {
                "Ingress": {
                    "num_replicas": 2,
                    "max_replicas_per_node": 1,
                    "ray_actor_options": {"num_cpus": 0.5},
                }
            }
            serve.run(build_app(SETTINGS, options), name=APP_NAME, route_prefix="/")
            deadline = time.monotonic() + 120
            while _get(lr.url + "/readyz")[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.25)
            order = [i % N_IMAGES for i in range(3 * N_IMAGES)]
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda i: _post(lr.url, images[i]), order))
            for i, (status, body) in zip(order, answers, strict=True):
                assert status == 200, body
                _assert_same_persons(body, reference[i], f"image #{i}")
            got = serve.get_deployment_handle(INGRESS_NAME, APP_NAME).broadcast("stats").results()
            stats = list(got.values()) if isinstance(got, dict) else list(got)

            # Each node runs its own HAProxy (a config under our directory per node id), and
            # Serve reports both nodes' proxies healthy: the nodes share this machine, and a
            # node whose HAProxy could not bind its ports would be restarted every few seconds.
            def healthy() -> set[str]:
                return {n for n, st in serve.status().proxies.items() if st == "HEALTHY"}

            wait_until(lambda: healthy() == set(lr.node_ids), 120, "both nodes' proxies healthy")
            wait_until(lambda: _haproxy_nodes(root) == set(lr.node_ids), 120, "an HAProxy per node")
            # ... and spread the requests over both replicas (no Python proxy in between).
            assert sorted(s["requests_ok"] > 0 for s in stats) == [True, True], stats

            # Request heads: up to the service's max_headers_bytes pass HAProxy (its
            # RAY_SERVE_HAPROXY_TUNE_BUFSIZE); a head above the buffer is HAProxy's 400.
            limit = Settings.model_fields["max_headers_bytes"].default
            assert _get_with_header(lr.port, "/readyz", limit - 1024) == 200
            assert _get_with_header(lr.port, "/readyz", 2 * limit) == 400

            # Streamed NDJSON: the first line arrives while the stream is held open.
            serve.run(_probe_app(), name="probe", route_prefix="/probe")
            conn = http.client.HTTPConnection("127.0.0.1", lr.port, timeout=120)
            try:
                conn.request("GET", "/probe/ndjson")
                resp = conn.getresponse()
                assert resp.status == 200
                assert resp.getheader("Content-Type", "").startswith("application/x-ndjson")
                assert json.loads(resp.readline()) == {"i": 0}
                assert _post_empty(lr.url + "/probe/release") == 200
                assert [json.loads(x) for x in resp.read().splitlines()] == [{"i": 1}, {"i": 2}]
            finally:
                conn.close()
            # WebSockets: the upgrade and both directions go through HAProxy.
            from websockets.sync.client import connect

            with connect(f"ws://127.0.0.1:{lr.port}/probe/ws", open_timeout=120) as ws:
                for text in ("pose", "frame 2"):
                    ws.send(text)
                    assert ws.recv(timeout=120) == text.upper()
            serve.delete("probe")
            serve.delete(APP_NAME)
    finally:
        shutil.rmtree(root, ignore_errors=True)
