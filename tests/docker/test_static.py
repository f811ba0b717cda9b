"""Static checks of docker/, docker-compose.yml and .dockerignore with the real tools."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CONTRACT_METRICS as _CONTRACT_METRICS
from tests.conftest import REPO
from tests.docker.conftest import (
    COMPOSE_FILE,
    DASHBOARD_JSON,
    DOCKERFILES,
    DOCKERIGNORE,
    GRAFANA_DIR,
    IMAGE_LOCKS,
    PROMETHEUS_YML,
    dashboard_exprs,
    dockerignore_sends,
    load_dashboard,
    metric_names,
    to_promql,
)

CONTRACT_METRICS = set(_CONTRACT_METRICS)
MODELS_COMPOSE_FILE = REPO / "docker-compose.models.yml"
_SUFFIXES = ("_bucket", "_sum", "_count")


def _run(
    cmd: Sequence[str | Path], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


# --- Dockerfiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_hadolint_clean(hadolint: Path, variant: str) -> None:
    proc = _run([hadolint, "--no-color", "--failure-threshold", "info", DOCKERFILES[variant]])
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_hadolint_catches_a_bad_dockerfile(hadolint: Path, tmp_path: Path) -> None:
    """The linter really runs: an unpinned `latest` base with `apt-get` and no cleanup fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    proc = _run([hadolint, "--no-color", bad])
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout


@pytest.mark.parametrize(
    ("variant", "required"),
    [
        ("cpu", [("ARG", "=python:3.11"), ("ARG", "-slim"),
                 ("RUN", '-c /src/requirements/cpu.lock "/src[cpu]"'),
                 ("ENV", "DARKPOSE_PROVIDERS=cpu")]),
        ("gpu", [("ARG", "nvidia/cuda:12"), ("ARG", "cudnn-runtime-ubuntu22.04"),
                 ("RUN", "python3.11"), ("RUN", '-c /src/requirements/gpu.lock "/src[gpu]"'),
                 ("ENV", "DARKPOSE_PROVIDERS=cuda")]),
        ("cpu", [("ENV", "HOME=/home/darkpose"), ("ENV", "DARKPOSE_HOST=0.0.0.0"),
                 ("RUN", "--create-home --home-dir /home/darkpose"),
                 ("COPY", "--from=builder /opt/venv /opt/venv"), ("HEALTHCHECK", "/readyz")]),
        ("gpu", [("ENV", "HOME=/home/darkpose"), ("ENV", "DARKPOSE_HOST=0.0.0.0"),
                 ("RUN", "--create-home --home-dir /home/darkpose"),
                 ("COPY", "--from=builder /opt/venv /opt/venv"), ("HEALTHCHECK", "/readyz")]),
    ],
)  # fmt: skip
def test_dockerfile_requirements(variant: str, required: list[tuple[str, str]]) -> None:
    instructions = _instructions(DOCKERFILES[variant])
    for word, needle in required:
        assert any(w == word and needle in args for w, args in instructions), (
            f"expected a {word} containing {needle!r} in {DOCKERFILES[variant].name}, got none"
        )


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_structure(variant: str) -> None:
    instructions = _instructions(DOCKERFILES[variant])
    froms = [args for w, args in instructions if w == "FROM"]
    assert len(froms) >= 2 and " AS builder" in froms[0], f"expected multi-stage, got {froms}"
    # Runtime stage: non-root numeric user, python health check (no curl), `darkpose serve`.
    last_stage = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [args for w, args in last_stage if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert users[-1].split(":")[0].isdigit(), f"expected a numeric uid, got {users[-1]}"
    health = [args for w, args in last_stage if w == "HEALTHCHECK"]
    assert len(health) == 1 and '["python", "-c"' in health[0] and "curl" not in health[0]
    assert ("ENTRYPOINT", '["darkpose"]') in last_stage and ("CMD", '["serve"]') in last_stage
    # torch never goes into a serving image.
    runs = " ".join(args for w, args in instructions if w == "RUN")
    assert "export]" not in runs and "torch==" not in runs and "mmdet]" not in runs
    # The packaged models are the default: no model directory to mount, none set.
    assert not [a for w, a in instructions if w == "VOLUME"], "expected no VOLUME"
    envs = " ".join(args for w, args in instructions if w == "ENV")
    assert "DARKPOSE_MODEL_DIR" not in envs, "expected the packaged models by default"


@pytest.mark.parametrize("dockerfile", sorted(IMAGE_LOCKS), ids=lambda p: p.name)
def test_dockerfile_installs_from_its_lock_file(dockerfile: Path) -> None:
    """Each image installs at the versions of its lock file, which the build copies in."""
    lock = IMAGE_LOCKS[dockerfile]
    instructions = _instructions(dockerfile)
    assert ("COPY", f"{lock} ./{lock}") in instructions, f"expected COPY {lock} ./{lock}"
    installs = [a for w, a in instructions if w == "RUN" and "pip install" in a]
    assert len(installs) == 1 and f"-c /src/{lock} " in installs[0], installs
    assert (REPO / lock).is_file()


def _repository_files() -> list[str]:
    """Every file of the working tree (git's view: tracked plus untracked, not ignored), and the
    ignored files a build must not pick up (caches, egg-info, ONNX files outside the zoo)."""
    proc = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"])
    if proc.returncode != 0:
        pytest.skip(f"needs a git checkout, got: {proc.stderr.strip()}")
    extra = ["service/core/__pycache__/codec.cpython-311.pyc", "darkpose_service.egg-info/PKG-INFO",
             "service/x.egg-info/PKG-INFO", "out/model.onnx", "models/hrnet.pth"]  # fmt: skip
    return [*proc.stdout.splitlines(), *extra]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    """Whitelist .dockerignore: every COPY source of every Dockerfile is sent, with all files
    of the package (the links' targets included), the packaged models, the licence and the lock
    files, and nothing else: no tests, benchmarks, data, caches or other ONNX files."""
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", f"expected a whitelist starting with '*', got {rules[0]!r}"
    for dockerfile in IMAGE_LOCKS:
        for word, args in _instructions(dockerfile):
            if word != "COPY" or args.startswith("--from"):
                continue
            for src in args.split()[:-1]:
                assert dockerignore_sends(src.rstrip("/")), f"{dockerfile.name}: {src} ignored"
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY source {src} missing"
    files = _repository_files()
    sent = {f for f in files if dockerignore_sends(f)}
    package = ("darkpose/", "service/", "models/", "exporters/")
    generated = ("__pycache__", ".pyc", ".egg-info", ".pth")
    for f in files:
        wanted = (
            f.startswith(package) and not any(g in f for g in generated)
            or f in ("pyproject.toml", "README.md", "LICENSE")
            or (f.startswith("requirements/") and f.endswith(".lock"))
        )  # fmt: skip
        if f.endswith(".onnx"):
            wanted = f.startswith("darkpose/zoo/")
        assert (f in sent) == wanted, f"expected {f} {'sent' if wanted else 'ignored'}"
    zoo = {f"darkpose/zoo/{p.name}" for p in (REPO / "darkpose" / "zoo").glob("*.onnx")}
    assert zoo and zoo <= sent, "the packaged models go into the image"
    for link in ("darkpose/service", "darkpose/models", "darkpose/exporters"):
        assert link in sent and (REPO / link).is_symlink(), link


@pytest.mark.parametrize(
    ("rules", "path", "sent"),
    [
        (["*", "!pkg/"], "pkg/a/b.py", True),
        (["*", "!pkg/"], "other/b.py", False),
        (["*", "!pkg/", "**/__pycache__"], "pkg/__pycache__/x.pyc", False),
        (["*", "!pkg/", "**/*.onnx", "!pkg/zoo/*.onnx"], "pkg/zoo/m.onnx", True),
        (["*", "!pkg/", "**/*.onnx", "!pkg/zoo/*.onnx"], "pkg/zoo/sub/m.onnx", False),
        (["*", "!req/*.lock"], "req/cpu.lock", True),
        (["*", "!req/*.lock"], "req/refresh.sh", False),
    ],
)
def test_dockerignore_matcher(rules: list[str], path: str, sent: bool) -> None:
    """The matcher the test above relies on decides as Docker does on these cases."""
    assert dockerignore_sends(path, rules) is sent


# --- docker-compose.yml ------------------------------------------------------------------------


def _compose_config(docker_compose: Path, *args: str, **env: str) -> dict[str, Any]:
    full_env = {**os.environ, **env}
    proc = _run(
        [docker_compose, "-f", COMPOSE_FILE, *args, "config", "--format", "json"], env=full_env
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize("profile_args", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_config_quiet(docker_compose: Path, profile_args: list[str]) -> None:
    proc = _run([docker_compose, "-f", COMPOSE_FILE, *profile_args, "config", "-q"])
    assert proc.returncode == 0, f"docker-compose config -q failed:\n{proc.stderr}"
    assert proc.stdout == ""


def test_compose_rejects_a_broken_file(docker_compose: Path, tmp_path: Path) -> None:
    """The validator really validates: an unknown service key is an error."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  pose:\n    image: x\n    no_such_key: 1\n")
    proc = _run([docker_compose, "-f", broken, "config", "-q"])
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr


def test_compose_default_services(docker_compose: Path) -> None:
    cfg = _compose_config(docker_compose)
    services = cfg["services"]
    assert set(services) == {"pose", "prometheus", "grafana"}, "pose-gpu must be profile-only"
    pose = services["pose"]
    assert pose["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert Path(pose["build"]["context"]) == REPO
    # The packaged models by default: no model directory set, nothing to mount.
    assert "DARKPOSE_MODEL_DIR" not in pose["environment"]
    assert not pose.get("volumes"), pose.get("volumes")
    assert pose["environment"]["DARKPOSE_HOST"] == "0.0.0.0"
    assert pose["environment"]["DARKPOSE_PORT"] == "8000"
    assert [p["target"] for p in pose["ports"]] == [8000]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", image), f"expected a pinned tag: {image}"
    # Every bind-mounted file of prometheus / grafana exists in the repository.
    for name in ("prometheus", "grafana"):
        for vol in services[name]["volumes"]:
            if vol["type"] == "bind":
                assert Path(vol["source"]).exists(), f"{name}: missing {vol['source']}"
    prom_mounts = {v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"]}
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_YML
    graf_mounts = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"]}
    assert graf_mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    assert graf_mounts["/etc/grafana/dashboards"] == DASHBOARD_JSON.parent


def test_compose_gpu_profile(docker_compose: Path) -> None:
    cfg = _compose_config(docker_compose, "--profile", "gpu")
    gpu = cfg["services"]["pose-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert gpu["environment"]["DARKPOSE_PROVIDERS"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert {p["published"] for p in gpu["ports"]}.isdisjoint(
        {p["published"] for p in cfg["services"]["pose"]["ports"]}
    ), "CPU and GPU services must publish different host ports"


def test_compose_requires_the_grafana_password(docker_compose: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    proc = _run([docker_compose, "-f", COMPOSE_FILE, "config", "-q"], env=env)
    assert proc.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    cfg = _compose_config(docker_compose)
    grafana_env = cfg["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == os.environ["GRAFANA_ADMIN_PASSWORD"]


def test_compose_binds_monitoring_to_loopback_and_limits_memory(docker_compose: Path) -> None:
    cfg = _compose_config(docker_compose, "--profile", "gpu")
    services = cfg["services"]
    for name in ("prometheus", "grafana"):
        assert [p.get("host_ip") for p in services[name]["ports"]] == ["127.0.0.1"], name
    for name, svc in services.items():
        assert int(svc.get("mem_limit", 0)) > 0, f"{name}: expected a memory limit"
    budget = int(services["pose"]["environment"]["DARKPOSE_MEMORY_BUDGET_MB"]) * 1024 * 1024
    assert budget < int(services["pose"]["mem_limit"])


def test_ray_compose_binds_the_dashboard_to_loopback() -> None:
    ray = yaml.safe_load((REPO / "docker-compose.ray.yml").read_text())
    head = ray["services"]["ray-head"]
    dashboard = [p for p in head["ports"] if str(p).endswith(":8265")]
    assert dashboard and all(str(p).startswith("127.0.0.1:") for p in dashboard), dashboard
    assert all("mem_limit" in svc for svc in ray["services"].values())


@pytest.mark.parametrize("profile_args", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_models_override_mounts_the_users_models(
    docker_compose: Path, tmp_path: Path, profile_args: list[str]
) -> None:
    cfg = _compose_config(
        docker_compose, "-f", str(MODELS_COMPOSE_FILE), *profile_args, DARKPOSE_MODELS=str(tmp_path)
    )
    pose_services = {"pose", "pose-gpu"} if profile_args else {"pose"}
    assert set(cfg["services"]) == pose_services | {"prometheus", "grafana"}
    for name in pose_services:
        svc = cfg["services"][name]
        assert svc["environment"]["DARKPOSE_MODEL_DIR"] == "/models"
        assert svc["environment"]["DARKPOSE_PORT"] == "8000"  # merged, not replaced
        (models,) = [v for v in svc["volumes"] if v["target"] == "/models"]
        assert Path(models["source"]) == tmp_path and models["read_only"] is True
    if profile_args:
        assert cfg["services"]["pose-gpu"]["profiles"] == ["gpu"]


def test_compose_models_override_requires_the_directory(docker_compose: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DARKPOSE_MODELS"}
    proc = _run(
        [docker_compose, "-f", COMPOSE_FILE, "-f", MODELS_COMPOSE_FILE, "config", "-q"], env=env
    )
    assert proc.returncode != 0
    assert "set DARKPOSE_MODELS to the directory of your ONNX models" in proc.stderr, proc.stderr


# --- Prometheus ----------------------------------------------------------------------------------


def test_promtool_check_config(promtool: Path) -> None:
    proc = _run([promtool, "check", "config", PROMETHEUS_YML])
    assert proc.returncode == 0, f"promtool:\n{proc.stdout}{proc.stderr}"
    assert "SUCCESS" in proc.stdout


def test_promtool_rejects_a_broken_config(promtool: Path, tmp_path: Path) -> None:
    bad = tmp_path / "prometheus.yml"
    bad.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: five seconds\n")
    proc = _run([promtool, "check", "config", bad])
    assert proc.returncode != 0


def test_prometheus_scrapes_the_compose_services(docker_compose: Path) -> None:
    """The scrape targets are the compose service names on the port the service listens on."""
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    job = jobs["darkpose"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    cfg = _compose_config(docker_compose, "--profile", "gpu")
    expected = {
        f"{name}:{cfg['services'][name]['environment']['DARKPOSE_PORT']}"
        for name in ("pose", "pose-gpu")
    }
    assert targets == expected


# --- Grafana -------------------------------------------------------------------------------------


def test_grafana_provisioning_matches_compose_and_dashboard() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    ds = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((provisioning / "dashboards" / "darkpose.yml").read_text())
    assert [p["options"]["path"] for p in prov["providers"]] == ["/etc/grafana/dashboards"]

    dash = load_dashboard()
    uids: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            if isinstance(obj.get("datasource"), dict):
                uids.add(obj["datasource"]["uid"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(dash)
    assert uids == {source["uid"]}, f"expected datasource uid {source['uid']}, got {uids}"


def test_dashboard_panels_and_queries() -> None:
    dash = load_dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = dashboard_exprs(dash)
    joined = "\n".join(exprs)
    # The panels the dashboard must have.
    for pattern in (
        r"histogram_quantile\(0\.5, sum by \(le, stage\) \(rate\(darkpose_stage_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(le, stage\) \(rate\(darkpose_stage_seconds_bucket",
        r"rate\(darkpose_requests_total",
        r"darkpose_batch_size_(bucket|sum)",
        r'status=~"4\.\.\|5\.\."',
    ):
        assert re.search(pattern, joined), f"expected a query matching {pattern!r}"
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"query selects no darkpose metric: {expr}"
        for name in names:
            base = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)
            assert name in CONTRACT_METRICS or base in CONTRACT_METRICS, (
                f"expected a metric from docs/contracts.md, got {name} in {expr}"
            )


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule, Grafana variables filled)."""
    exprs = [to_promql(e) for e in dashboard_exprs(load_dashboard())]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"darkpose:dashboard_query_{i}", "expr": e}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _run([promtool, "check", "rules", path])
    assert proc.returncode == 0, f"promtool:\n{proc.stdout}{proc.stderr}"
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout
    # ...and it does reject a broken query.
    broken = "sum by (le (rate(darkpose_batch_size_bucket[1m]))"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": broken}]}]})
    )
    assert _run([promtool, "check", "rules", path]).returncode != 0


def test_dockerfiles_copy_every_installed_package() -> None:
    """The package and every folder its links point into is copied into each image (a folder
    left out installs silently without it: ``from darkpose import ...`` would fail there)."""
    linked = {p.readlink().name for p in (REPO / "darkpose").iterdir() if p.is_symlink()}
    assert linked == {"service", "models", "exporters"}
    packages = {"darkpose", *linked}
    for dockerfile in [*DOCKERFILES.values(), REPO / "docker" / "Dockerfile.ray"]:
        copied = {
            src.rstrip("/")
            for word, args in _instructions(dockerfile)
            if word == "COPY" and not args.startswith("--from")
            for src in args.split()[:-1]
        }
        assert packages <= copied, f"{dockerfile.name}: expected {packages} copied, got {copied}"


def test_install_docs_name_each_images_base_and_lock() -> None:
    """docs/install.md's image table names the base image and lock file each Dockerfile uses."""
    docs = (REPO / "docs" / "install.md").read_text()
    rows = {
        ln.split("|")[1].strip(" `"): ln for ln in docs.splitlines() if "`docker/Dockerfile." in ln
    }
    for dockerfile, lock in IMAGE_LOCKS.items():
        row = rows.get(f"docker/{dockerfile.name}")
        assert row is not None, f"expected a row for docker/{dockerfile.name} in docs/install.md"
        bases = [
            a.split("=", 1)[1] for w, a in _instructions(dockerfile) if w == "ARG" and "IMAGE=" in a
        ]
        runtime = bases[0]  # PYTHON_IMAGE / CUDA_IMAGE: the first image ARG is the runtime base
        assert f"`{runtime}`" in row and f"`{lock}`" in row, (
            f"expected {runtime} and {lock} in docs/install.md's row, got {row}"
        )
