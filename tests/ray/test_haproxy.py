"""The optional HAProxy ingress (Ray 2.60, ``RAY_SERVE_ENABLE_HA_PROXY=1``) in front of the
``pipeline`` topology, on a real local 1-node × 2-CPU cluster: HAProxy forwards HTTP straight
to the replicas' own HTTP servers, and the answers stay equal to the single-process service's.

Needs the ``haproxy`` executable (Debian package ``haproxy``; the Ray image has it): skipped
without it unless ``DARKPOSE_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IMAGES, MODELS, missing_requirement
from tests.ray.test_cluster import _assert_same_persons, _get, _post

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

SETTINGS: dict[str, Any] = {"model_dir": str(MODELS), "intra_op_threads": 1}
N_IMAGES = 8


def _haproxy_running_with(directory: str) -> bool:
    """An ``haproxy`` process runs with a config file under ``directory`` (Ray puts one per
    node in a sub-directory named after the node)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"haproxy") and directory.encode() in b" ".join(argv):
            return True
    return False


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
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{root}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{root}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": root,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{root}/server-state",
    }
    try:
        with local_ray_cluster(num_nodes=1, cpus_per_node=2, env=env) as lr:
            options = {"Ingress": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}}
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
            # The HAProxy of this cluster (its config under our directory) served them ...
            assert _haproxy_running_with(root)
            # ... and spread the requests over both replicas (no Python proxy in between).
            assert sorted(s["requests_ok"] > 0 for s in stats) == [True, True], stats
            serve.delete(APP_NAME)
    finally:
        shutil.rmtree(root, ignore_errors=True)
