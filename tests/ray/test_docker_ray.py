"""docker/Dockerfile.ray and docker-compose.ray.yml, with the real linters (no daemon)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.docker.conftest import (
    COMPOSE_FILE,
    DOCKERIGNORE,
    TEST_GRAFANA_PASSWORD,
    dockerignore_sends,
    find_tool,
)

DOCKERFILE = REPO / "docker" / "Dockerfile.ray"
RAY_COMPOSE_FILE = REPO / "docker-compose.ray.yml"
RAY_MODELS_FILE = REPO / "docker-compose.ray-models.yml"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf = f"{buf} {line[:-1].strip()}" if line.endswith("\\") else f"{buf} {line}"
        if line.endswith("\\"):
            continue
        word, _, args = buf.strip().partition(" ")
        out.append((word.upper(), args.strip()))
        buf = ""
    return out


def test_dockerfile_ray_is_hadolint_clean() -> None:
    hadolint = find_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", DOCKERFILE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_ray_installs_the_ray_extra_and_runs_non_root() -> None:
    ins = _instructions(DOCKERFILE)
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert '"/src[cpu,ray]"' in runs
    assert "torch==" not in runs and "export]" not in runs
    last = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [a for w, a in last if w == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    envs = " ".join(a for w, a in last if w == "ENV")
    assert "DARKPOSE_MODEL_DIR" not in envs  # the packaged models by default
    assert not [a for w, a in ins if w == "VOLUME"]
    assert '-c /src/requirements/ray.lock "/src[cpu,ray]"' in runs
    assert "RAY_max_direct_call_object_size=1048576" in envs  # images inline, not via plasma
    assert "haproxy" in " ".join(a for w, a in last if w == "RUN")  # the HAProxy ingress option
    (health,) = [a for w, a in last if w == "HEALTHCHECK"]
    assert "/-/healthz" in health and "curl" not in health


def test_dockerfile_ray_copies_only_what_dockerignore_lets_in() -> None:
    assert DOCKERIGNORE.is_file()
    for word, args in _instructions(DOCKERFILE):
        if word != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            assert dockerignore_sends(src.rstrip("/")), f"{src} is docker-ignored"
            assert (REPO / src).exists(), src


def _compose(file: Path, *args: str | Path) -> dict[str, Any]:
    compose = find_tool("docker-compose")
    proc = subprocess.run(
        [compose, "-f", file, *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        # docker-compose.yml requires a Grafana password (tests/docker/conftest.py sets it there).
        env={
            **os.environ,
            "RAY_AUTH_TOKEN": "t0ken",
            "GRAFANA_ADMIN_PASSWORD": TEST_GRAFANA_PASSWORD,
            "DARKPOSE_MODELS": str(REPO / "darkpose" / "zoo"),
        },
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_compose_ray_file_starts_a_head_and_a_worker() -> None:
    assert not {"ray-head", "ray-worker"} & set(_compose(COMPOSE_FILE)["services"]), (
        "ray must be opt-in (its own compose file)"
    )
    services = _compose(RAY_COMPOSE_FILE)["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["build"]["dockerfile"] == "docker/Dockerfile.ray"
    assert head["image"] == worker["image"] == "darkpose-service:ray"
    head_cmd = " ".join(head["command"])
    assert "ray start --head" in head_cmd and "serve deploy deploy/serve_config.yaml" in head_cmd
    assert "--address=ray-head:6379" in " ".join(worker["command"])
    assert "ray-head" in worker["depends_on"]
    for svc in (head, worker):
        assert svc["environment"]["RAY_AUTH_TOKEN"] == "t0ken"  # one shared token
        assert "DARKPOSE_MODEL_DIR" not in svc["environment"]  # the packaged models
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert set(mounts) == {"/app/deploy"}
        assert Path(mounts["/app/deploy"]["source"]) == REPO / "deploy"
    published = {p["published"] for p in head["ports"] if p["target"] == 8000}
    others = {p["published"] for p in _compose(COMPOSE_FILE)["services"]["pose"]["ports"]}
    assert published and not published & others, "Serve must not take the CPU service's port"


def test_compose_ray_models_override_mounts_the_users_models_on_every_node() -> None:
    services = _compose(RAY_COMPOSE_FILE, "-f", RAY_MODELS_FILE)["services"]
    assert set(services) == {"ray-head", "ray-worker"}
    for svc in services.values():
        assert svc["environment"]["DARKPOSE_MODEL_DIR"] == "/models"
        assert svc["environment"]["RAY_AUTH_TOKEN"] == "t0ken"  # merged, not replaced
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert set(mounts) == {"/app/deploy", "/models"}
        assert Path(mounts["/models"]["source"]) == REPO / "darkpose" / "zoo"
        assert mounts["/models"]["read_only"] is True
