"""The commented access-control lines of docker-compose.yml are a working configuration:
uncommented, `docker-compose config` accepts them and mounts the key file as a secret."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.docker.conftest import COMPOSE_FILE

#: The commented lines an operator uncomments to turn API keys on (docs/security.md).
_ACCESS_LINE = re.compile(
    r"^(\s*)# ((?:DARKPOSE_API_KEYS_FILE|DARKPOSE_MAX_INFLIGHT_PER_CLIENT|secrets): .*"
    r"|secrets:$|  darkpose_api_keys:$|    file: \./secrets/api_keys$)"
)


def _uncommented(text: str) -> tuple[str, int]:
    out, n = [], 0
    for line in text.splitlines():
        m = _ACCESS_LINE.match(line)
        if m:
            line, n = m.group(1) + m.group(2), n + 1
        out.append(line)
    return "\n".join(out) + "\n", n


def test_uncommented_access_control_is_valid_compose(docker_compose: Path, tmp_path: Path) -> None:
    text, n = _uncommented(COMPOSE_FILE.read_text())
    assert n == 6, f"expected the 6 commented access-control lines, got {n}"
    (tmp_path / "docker-compose.yml").write_text(text)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api_keys").write_text("example-key-0123456789\n")
    proc = subprocess.run(
        [str(docker_compose), "-f", "docker-compose.yml", "--profile", "gpu", "config",
         "--format", "json"],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    for name in ("pose", "pose-gpu"):
        svc = cfg["services"][name]
        assert svc["environment"]["DARKPOSE_API_KEYS_FILE"] == "/run/secrets/darkpose_api_keys"
        assert [s["source"] for s in svc["secrets"]] == ["darkpose_api_keys"]
    assert cfg["secrets"]["darkpose_api_keys"]["file"] == str(tmp_path / "secrets" / "api_keys")
