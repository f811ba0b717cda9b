"""docker-compose.ray.yml refuses to start without RAY_AUTH_TOKEN, and its head gives up.

Compose's own interpolation is checked with the real ``docker-compose`` binary.  The head's
command is the string compose hands to ``bash -c``; it runs here under bash with stand-in
``ray``/``serve``/``sleep`` executables first on PATH (a real Ray head is not what is under
test: the retry loop around ``serve deploy`` is), so a deploy that never succeeds must end
the container with a non-zero status instead of sleeping forever.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.docker.conftest import COMPOSE_FILE

RAY_COMPOSE_FILE = REPO / "docker-compose.ray.yml"


def _config(
    docker_compose: Path, file: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    return subprocess.run(
        [str(docker_compose), "-f", str(file), "config", "--format", "json"],
        cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("env", [{}, {"RAY_AUTH_TOKEN": ""}], ids=["unset", "empty"])
def test_ray_compose_refuses_without_a_token(docker_compose: Path, env: dict[str, str]) -> None:
    proc = _config(docker_compose, RAY_COMPOSE_FILE, env)
    assert proc.returncode != 0
    assert "required variable RAY_AUTH_TOKEN is missing a value" in proc.stderr, proc.stderr
    assert "openssl rand -hex 32" in proc.stderr


def test_default_compose_needs_no_ray_token(docker_compose: Path) -> None:
    proc = _config(docker_compose, COMPOSE_FILE, {})
    assert proc.returncode == 0, proc.stderr
    assert not {"ray-head", "ray-worker"} & set(json.loads(proc.stdout)["services"])


def _head_command(docker_compose: Path) -> str:
    proc = _config(docker_compose, RAY_COMPOSE_FILE, {"RAY_AUTH_TOKEN": "t0ken"})
    assert proc.returncode == 0, proc.stderr
    command = json.loads(proc.stdout)["services"]["ray-head"]["command"]
    assert command[:2] == ["bash", "-c"], command
    # `config` prints a re-loadable file: `$$` stays escaped; the container sees `$`.
    return str(command[2]).replace("$$", "$")


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$CALLS"\n{body}\n')
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("ray_rc", "deploy_ok_at", "returncode", "deploys", "slept_forever"),
    [
        (0, None, 1, 3, False),  # serve deploy never succeeds: give up after the attempts
        (0, 2, 0, 2, True),  # succeeds on the second attempt: stay up
        (1, None, 1, 0, False),  # the head does not start: no deploy at all
    ],
    ids=["never-deploys", "deploys-on-retry", "head-fails"],
)
def test_head_retries_serve_deploy_a_bounded_number_of_times(
    docker_compose: Path,
    tmp_path: Path,
    ray_rc: int,
    deploy_ok_at: int | None,
    returncode: int,
    deploys: int,
    slept_forever: bool,
) -> None:
    command = _head_command(docker_compose)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    _stub(bin_dir, "ray", f"exit {ray_rc}")
    ok_at = deploy_ok_at or 10**6
    _stub(bin_dir, "serve", f'n=$(grep -c "^serve " "$CALLS"); [ "$n" -ge {ok_at} ]')
    _stub(bin_dir, "sleep", "exit 0")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(calls),
        "DARKPOSE_SERVE_DEPLOY_ATTEMPTS": "3",
        "DARKPOSE_SERVE_DEPLOY_DELAY_S": "0",
    }
    proc = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
    )
    lines = calls.read_text().splitlines()
    assert proc.returncode == returncode, proc.stderr
    assert sum(ln.startswith("serve deploy deploy/serve_config.yaml") for ln in lines) == deploys
    assert ("sleep infinity" in lines) is slept_forever, lines
    if deploys == 3:
        assert proc.stderr.strip().splitlines()[-1] == (
            "serve deploy: expected success within 3 attempts, got none; exiting"
        )


def test_readme_compose_commands_name_existing_files_and_profiles() -> None:
    """Every `docker compose …` line of the README and the deployment page uses a compose file
    that exists and a profile that file defines."""
    import re

    import yaml

    readme = (REPO / "README.md").read_text() + (REPO / "docs" / "deployment.md").read_text()
    commands = [
        ln for ln in readme.splitlines() if re.search(r"docker[ -]compose (-f|--profile|up)", ln)
    ]
    assert len(commands) >= 4, commands
    for line in commands:
        files = re.findall(r"-f (\S+)", line) or ["docker-compose.yml"]
        profiles: set[str] = set()
        for name in files:
            path = REPO / name
            assert path.is_file(), f"docs: {line!r} names a missing {name}"
            services = yaml.safe_load(path.read_text())["services"].values()
            profiles |= {p for svc in services for p in svc.get("profiles", [])}
        for profile in re.findall(r"--profile (\S+)", line):
            assert profile in profiles, f"docs: {line!r}: no profile {profile} in {files}"
