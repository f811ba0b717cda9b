"""Tests that need an external binary skip without it, and fail under ``.ci/run``.

A fresh machine without the Debian ``prometheus`` package must pass README's test command
(the promtool/prometheus checks skip with their reason); ``DARKPOSE_REQUIRE_TOOLS=1``, which
``.ci/run`` exports, turns those skips into failures.  Checked on a real pytest run whose PATH
holds no tool at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, REQUIRE_TOOLS_ENV

#: Needs only `promtool`, which is never a pip console script (so never beside the interpreter).
PROMTOOL_TEST = "tests/docker/test_static.py::test_promtool_check_config"


def _pytest_without_tools(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k != REQUIRE_TOOLS_ENV}
    full_env = {**base, "PATH": str(empty_bin), "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", PROMTOOL_TEST],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "returncode", "outcome", "reason"),
    [
        ({}, 0, "1 skipped", f"set {REQUIRE_TOOLS_ENV}=1 to fail instead"),
        ({REQUIRE_TOOLS_ENV: "0"}, 0, "1 skipped", f"set {REQUIRE_TOOLS_ENV}=1 to fail instead"),
        # a fixture that fails is reported as an error (exit status 1 all the same)
        ({REQUIRE_TOOLS_ENV: "1"}, 1, "1 error", f"{REQUIRE_TOOLS_ENV}=1 makes this a failure"),
    ],
    ids=["unset", "zero", "required"],
)
def test_missing_tool_skips_or_fails(
    tmp_path: Path, env: dict[str, str], returncode: int, outcome: str, reason: str
) -> None:
    proc = _pytest_without_tools(tmp_path, **env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == returncode, out
    assert outcome in out, out
    assert "needs the `promtool` executable" in out and "Debian package prometheus" in out, out
    assert reason in out, out


def test_ci_run_requires_the_tools() -> None:
    """``.ci/run`` exports the variable before it runs README's test command."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    exports = [i for i, ln in enumerate(lines) if ln.strip() == f"export {REQUIRE_TOOLS_ENV}=1"]
    tests = [i for i, ln in enumerate(lines) if "python -m pytest" in ln and not ln.startswith("#")]
    assert exports and tests, f"expected `export {REQUIRE_TOOLS_ENV}=1` and a pytest line"
    assert exports[0] < tests[-1], "the variable must be exported before the test command"
