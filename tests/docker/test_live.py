"""Live checks: the dashboard's metrics against the real app, and Prometheus scraping it.

* ``test_dashboard_metrics_are_exported``: the real app (``create_app`` + TestClient on the shared
  models) serves one ``POST /pose``; every metric and label the dashboard queries is in its
  ``/metrics``.
* ``test_prometheus_scrapes_the_app``: the image's command (``darkpose serve``, uvicorn) on
  127.0.0.1, configured by ``DARKPOSE_*`` env as in the container, and the real
  Prometheus (Debian binary) with ``docker/prometheus.yml`` (target rewritten to the app); the
  stage histograms come back through Prometheus's query API and every dashboard query evaluates.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import IMAGES, KPT_ANN, MODELS, REPO, stop_process
from tests.docker.conftest import (
    DOCKERFILES,
    PROMETHEUS_YML,
    dashboard_exprs,
    free_port,
    load_dashboard,
    metric_names,
    to_promql,
)

pytestmark = pytest.mark.slow

#: Stages whose histograms must be non-zero after a request with persons in it.
REQUIRED_STAGES = ("detect", "pose", "decode")
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job", "variant"}
_SELECTOR_RE = re.compile(r"(darkpose_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY_RE = re.compile(r"\bby\s*\(([^)]*)\)")
WAIT_S = 60.0


def _test_image() -> bytes:
    """A coco-mini image with 2–3 annotated persons (deterministic: lowest image id)."""
    ann = json.loads(KPT_ANN.read_text())
    counts: dict[int, int] = {}
    for a in ann["annotations"]:
        if a.get("num_keypoints", 0) > 0:
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    image_id = min(i for i, n in counts.items() if 2 <= n <= 3)
    file_name = next(im["file_name"] for im in ann["images"] if im["id"] == image_id)
    return (IMAGES / file_name).read_bytes()


def _wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"expected {what} within {timeout:.0f} s, got a timeout")


def _is_ready(response: httpx.Response) -> bool:
    """/readyz answered 200; fails at once (instead of waiting) when the model load failed."""
    if response.status_code != 200 and "failed load" in response.text:
        pytest.fail(f"expected the models to load, got {response.text}")
    return response.status_code == 200


def _exported(metrics_text: str) -> dict[str, set[str]]:
    """sample name → label names, from a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _dashboard_label_uses(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """(metric → label names in its selector, label names in by-clauses) of one query."""
    selectors: dict[str, set[str]] = {}
    for name, body in _SELECTOR_RE.findall(expr):
        selectors.setdefault(name, set()).update(_MATCHER_RE.findall(body))
    by: set[str] = set()
    for group in _BY_RE.findall(expr):
        by.update(x.strip() for x in group.split(",") if x.strip())
    return selectors, by


def _healthcheck_code() -> str:
    """The ``python -c`` program of the CPU image's HEALTHCHECK."""
    text = DOCKERFILES["cpu"].read_text().replace("\\\n", " ")
    match = re.search(r"HEALTHCHECK[^\n]*?CMD\s+(\[.*\])", text)
    if match is None:
        pytest.fail("expected a HEALTHCHECK ... CMD [...] in Dockerfile.cpu, got none")
    cmd = json.loads(match.group(1))
    if cmd[:2] != ["python", "-c"] or len(cmd) != 3:
        pytest.fail(f"expected HEALTHCHECK CMD ['python', '-c', code], got {cmd}")
    return str(cmd[2])


def _image_command() -> list[str]:
    """ENTRYPOINT + CMD (exec form) of the CPU image, e.g. ``["darkpose", "serve"]``."""
    parts: dict[str, list[str]] = {}
    for line in DOCKERFILES["cpu"].read_text().splitlines():
        word, _, rest = line.strip().partition(" ")
        if word in ("ENTRYPOINT", "CMD"):
            parts[word] = json.loads(rest)
    command = parts.get("ENTRYPOINT", []) + parts.get("CMD", [])
    if command[:1] != ["darkpose"]:
        pytest.fail(f"expected the image to run `darkpose ...`, got {command}")
    return command


# --- in-process app -----------------------------------------------------------------------------


def test_dashboard_metrics_are_exported() -> None:
    from darkpose.service.api import create_app
    from darkpose.service.settings import Settings

    overrides: dict[str, Any] = {"model_dir": MODELS, "intra_op_threads": 1, "warmup": False}
    settings = Settings(**overrides)
    with TestClient(create_app(settings)) as client:
        _wait_for("/readyz 200", lambda: _is_ready(client.get("/readyz")))
        resp = client.post("/pose", content=_test_image(), headers={"Content-Type": "image/jpeg"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["persons"], "expected persons in the test image, got none"
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
    exported = _exported(metrics.text)
    for stage in REQUIRED_STAGES:
        assert any(
            f'stage="{stage}"' in line
            for line in metrics.text.splitlines()
            if line.startswith("darkpose_stage_seconds_count")
        ), f"expected a darkpose_stage_seconds_count for stage={stage}"

    exprs = dashboard_exprs(load_dashboard())
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        missing = names - set(exported)
        assert not missing, f"dashboard query uses metrics the app does not export: {missing}"
        selectors, by = _dashboard_label_uses(expr)
        known = set().union(*(exported[n] for n in names)) | TARGET_LABELS | {"le"}
        for name, labels in selectors.items():
            assert labels <= exported[name] | TARGET_LABELS, (
                f"expected labels of {name} ({sorted(exported[name])}), got {sorted(labels)}"
            )
        assert by <= known, f"expected by-labels within {sorted(known)}, got {sorted(by)}"


# --- uvicorn + Prometheus -----------------------------------------------------------------------


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``darkpose serve`` (uvicorn) on 127.0.0.1:<free port>, set up by DARKPOSE_* env only."""
    log = tmp_path_factory.mktemp("app") / "uvicorn.log"
    port = free_port()
    # No model directory: like the image, the app serves the models packaged with darkpose.
    env = {
        **{k: v for k, v in os.environ.items() if k != "DARKPOSE_MODEL_DIR"},
        "DARKPOSE_HOST": "127.0.0.1",
        "DARKPOSE_PORT": str(port),
        "DARKPOSE_INTRA_OP_THREADS": "1",
        "DARKPOSE_WARMUP": "false",
        "DARKPOSE_LOG_LEVEL": "warning",
    }
    # The image's command (ENTRYPOINT ["darkpose"] + CMD ["serve"]), configured by env only.
    cmd = [sys.executable, "-m", "darkpose.service.cli", *_image_command()[1:]]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{_log_tail(log)}")
            return _is_ready(httpx.get(f"{url}/readyz", timeout=2))

        _wait_for("the app to become ready", ready)
        yield url
    finally:
        stop_process(proc, 15.0)


@pytest.fixture()
def prometheus_url(served_app: str, prometheus_bin: Path, tmp_path: Path) -> Iterator[str]:
    """Real Prometheus with docker/prometheus.yml, its darkpose target pointed at the app."""
    app_target = served_app.removeprefix("http://")
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    port = free_port()
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    jobs["darkpose"]["static_configs"] = [{"targets": [app_target]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    cmd = [
        str(prometheus_bin),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{_log_tail(log)}")
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

        _wait_for("Prometheus to become ready", ready, timeout=60)
        yield url
    finally:
        stop_process(proc, 15.0)


def _query(prom: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=10)
    body = resp.json()
    if resp.status_code != 200 or body.get("status") != "success":
        pytest.fail(f"expected a successful query for {promql!r}, got {resp.status_code} {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _stage_counts(prom: str) -> dict[str, float]:
    rows = _query(prom, "sum by (stage) (darkpose_stage_seconds_count)")
    return {r["metric"].get("stage", ""): float(r["value"][1]) for r in rows}


def _post_pose(app: str, image: bytes, n: int) -> None:
    for _ in range(n):
        resp = httpx.post(
            f"{app}/pose", content=image, headers={"Content-Type": "image/jpeg"}, timeout=60
        )
        assert resp.status_code == 200, resp.text


def test_prometheus_scrapes_the_app(served_app: str, prometheus_url: str) -> None:
    prom = prometheus_url
    _wait_for(
        "the darkpose target to be up",
        lambda: [float(r["value"][1]) for r in _query(prom, 'up{job="darkpose"}')] == [1.0],
        timeout=30,
    )
    image = _test_image()
    # First round creates the labelled stage series; once Prometheus has them, a second round
    # makes them grow so that rate() (and the dashboard's quantiles) have something to show.
    _post_pose(served_app, image, 2)
    _wait_for(  # a scrape may fall between the two requests: wait until both are seen
        "stage counts of both requests for detect/pose/decode in Prometheus",
        lambda: all(_stage_counts(prom).get(s, 0.0) >= 2.0 for s in REQUIRED_STAGES),
        timeout=30,
    )
    _post_pose(served_app, image, 3)
    _wait_for(
        "the stage counts to grow in Prometheus",
        lambda: all(_stage_counts(prom).get(s, 0.0) >= 5.0 for s in REQUIRED_STAGES),
        timeout=30,
    )
    for stage in REQUIRED_STAGES:
        rows = _query(prom, f'darkpose_stage_seconds_count{{job="darkpose", stage="{stage}"}}')
        assert rows and float(rows[0]["value"][1]) >= 5.0, (stage, rows)

    # Every dashboard query evaluates; the stage-latency quantiles have finite positive values.
    for expr in dashboard_exprs(load_dashboard()):
        _query(prom, to_promql(expr))
    p50 = _query(
        prom,
        "histogram_quantile(0.5, sum by (le, stage) (rate(darkpose_stage_seconds_bucket[1m])))",
    )
    values = {r["metric"]["stage"]: float(r["value"][1]) for r in p50}
    for stage in REQUIRED_STAGES:
        assert 0.0 < values.get(stage, float("nan")) < 30.0, values
    throughput = _query(prom, 'sum(rate(darkpose_requests_total{route="/pose"}[1m]))')
    assert throughput and float(throughput[0]["value"][1]) > 0.0


def test_image_healthcheck_probes_the_app(served_app: str) -> None:
    """The HEALTHCHECK program of the image passes against the live app, fails on a dead port."""
    code = _healthcheck_code()
    port = served_app.rsplit(":", 1)[1]
    ok = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "DARKPOSE_PORT": port},
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr.decode()
    dead = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "DARKPOSE_PORT": str(free_port())},
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert dead.returncode != 0
