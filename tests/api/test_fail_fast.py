"""``darkpose serve`` fails fast: a start that cannot serve ends the process.

Missing model files, a port in use, a port below 1024 without the capability or an address
this machine does not have end ``darkpose serve`` before anything says "serving on" or
"Application startup complete", with one error line naming the fix and exit status 2.  A
broken model file, or ``DARKPOSE_PROVIDERS=cuda`` where no CUDA provider loads (this machine:
onnxruntime's CPU build), ends it once the load fails, with one error line, instead of a server
whose ``/healthz`` says 200 while every ``/pose`` is a 503.  ``auto`` on a CPU build serves on
the CPU with no warning; the providers in use show in the startup log, ``/v1/models`` and
``darkpose_model_info{providers}``.  Health probes and scrapes are not access-logged at INFO.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from darkpose.service.api.errors import QUIET_PATHS
from darkpose.service.commands.serve import EXIT_LOAD_FAILED
from tests.api.conftest import ServerProcess, free_port, serve_env
from tests.conftest import POSE_ONNX, REPO

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def serve_until_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``darkpose serve`` that is expected to end by itself (a 90 s limit only against hangs)."""
    return subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "serve"],
        cwd=REPO,
        env=serve_env(free_port(), **env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def darkpose_lines(output: str, level: str) -> list[str]:
    """Lines of our own loggers (``<date> <time> LEVEL darkpose.…: message``) at ``level``."""
    return [ln for ln in output.splitlines() if f" {level} darkpose." in ln]


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_LOAD_FAILED, out
    errors = darkpose_lines(out, "ERROR")
    assert len(errors) == 1, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _truncated_model(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.onnx"
    data = POSE_ONNX.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def test_broken_pose_model_ends_serve(tmp_path: Path) -> None:
    path = _truncated_model(tmp_path)
    proc = serve_until_exit({"DARKPOSE_POSE_MODELS": f'["{path}"]'})
    line = assert_one_line_failure(proc, "cannot serve", "truncated.onnx")
    assert "expected" in line and "got" in line, line
    assert not any(s in proc.stdout + proc.stderr for s in SERVING), line


#: What must never be printed by a start that cannot serve.
SERVING = ("serving on", "Application startup complete", "Uvicorn running")


def _drop_net_bind_capability() -> None:
    """preexec_fn: drop CAP_NET_BIND_SERVICE from the bounding set, so that even root's
    ``darkpose serve`` lacks it after exec (PR_CAPBSET_DROP)."""
    import ctypes

    pr_capbset_drop, cap_net_bind_service = 24, 10
    if ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap_net_bind_service, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _cannot_serve(
    env: dict[str, str], args: list[str], preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    full = serve_env(free_port(), **env)
    return subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "--log-level", "INFO", "serve", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
        preexec_fn=preexec_fn,
    )


def test_port_in_use_fails_before_serving_and_names_a_free_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _cannot_serve({"DARKPOSE_DETECTER": "picodet"}, ["--port", str(port)])
    out = proc.stdout + proc.stderr
    line = assert_one_line_failure(proc, f"port {port} is in use", "use --port ")
    suggested = int(line.rsplit("--port ", 1)[1].split()[0])
    with socket.socket() as probe:  # the port it suggests was free when it said so
        probe.bind(("127.0.0.1", suggested))
    assert not any(s in out for s in SERVING), out
    # a DARKPOSE_* variable that is no setting: one warning naming the closest setting
    warnings = [ln for ln in darkpose_lines(out, "WARNING") if "DARKPOSE_DETECTER" in ln]
    assert len(warnings) == 1 and "did you mean DARKPOSE_DETECTOR?" in warnings[0], out


@pytest.mark.skipif(
    _unprivileged_port_start() <= 80, reason="this machine lets anyone bind port 80"
)
def test_privileged_port_without_the_capability_fails_before_serving() -> None:
    preexec = _drop_net_bind_capability if os.geteuid() == 0 else None
    proc = _cannot_serve({}, ["--port", "80"], preexec)
    out = proc.stdout + proc.stderr
    assert_one_line_failure(proc, "port 80 needs root or CAP_NET_BIND_SERVICE; use --port 8000")
    assert not any(s in out for s in SERVING), out


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        (
            {"DARKPOSE_MODEL_DIR": "{tmp}/no-models"},
            ("cannot serve", "does not exist: set DARKPOSE_MODEL_DIR=/path/to/models"),
        ),
        (
            {"DARKPOSE_MODEL_DIR": "{tmp}"},  # exists, but holds no models
            ("cannot serve", "pp_tinypose_256x192.onnx", "set DARKPOSE_MODEL_DIR to the"),
        ),
        (
            {"DARKPOSE_POSE_MODELS": "{tmp}/missing.onnx"},
            ("cannot serve", "missing.onnx", "nothing is at that absolute path"),
        ),
        (
            {"DARKPOSE_DETECTOR": "picodet", "DARKPOSE_PICODET_MODEL": "nope.onnx"},
            ("cannot serve", "picodet model", "nope.onnx"),
        ),
        (
            {"DARKPOSE_DETECTOR": "onnx(model={pose})"},  # a pose model as the detector
            ("cannot serve", "expected a detector card, got a pose card"),
        ),
    ],
    ids=["no-model-dir", "empty-model-dir", "absolute-missing", "detector-missing", "wrong-card"],
)
def test_missing_models_fail_before_serving(
    tmp_path: Path, env: dict[str, str], needles: tuple[str, ...]
) -> None:
    filled = {k: v.format(tmp=tmp_path, pose=POSE_ONNX) for k, v in env.items()}
    proc = _cannot_serve(filled, [])
    out = proc.stdout + proc.stderr
    line = assert_one_line_failure(proc, *needles)
    if "DARKPOSE_POSE_MODELS" in env:  # an absolute path gets no "give an absolute path"
        assert "absolute path" in line and "give the file's absolute path" not in line, line
    assert not any(s in out for s in SERVING), out


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has the CUDA provider")
def test_cuda_without_a_cuda_provider_ends_serve() -> None:
    proc = serve_until_exit({"DARKPOSE_PROVIDERS": "cuda"})
    assert_one_line_failure(proc, "CUDAExecutionProvider", "providers=auto|cpu")


def test_auto_serves_on_cpu_without_warnings(tmp_path: Path) -> None:
    server = ServerProcess(
        {"DARKPOSE_PROVIDERS": "auto"}, log=tmp_path / "serve.log", log_level="INFO"
    )
    try:
        server.wait_ready(90)
        models = httpx.get(server.base + "/v1/models", timeout=5).json()
        metrics = httpx.get(server.base + "/metrics", timeout=5).text
        assert httpx.get(server.base + "/healthz", timeout=5).status_code == 200
        # the access line of the last request (INFO) shows the probes' lines would be there
        assert httpx.get(server.base + "/v1/models", timeout=5).status_code == 200
        wait_for_log(server, "GET /v1/models 200", count=2)
    finally:
        returncode = server.terminate()
    text = server.log_text()
    assert returncode in (0, -signal.SIGTERM), text  # uvicorn re-raises SIGTERM after draining
    used = "CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider"
    assert models["providers"].split(",")[0] == used, models
    assert f'providers="{models["providers"]}"' in metrics
    loaded = [ln for ln in darkpose_lines(text, "INFO") if "models loaded" in ln]
    assert len(loaded) == 1 and f"(providers: {models['providers']})" in loaded[0], text
    serving = [ln for ln in darkpose_lines(text, "INFO") if "serving on http://" in ln]
    assert len(serving) == 1, text
    # the normal CPU path: no warning at all (the CPU fallback line is DEBUG on a CPU build)
    assert not darkpose_lines(text, "WARNING"), text
    assert not darkpose_lines(text, "ERROR"), text
    # health probes and scrapes: DEBUG, not INFO; other requests: INFO
    access = [ln for ln in darkpose_lines(text, "INFO") if "darkpose.service.api.access" in ln]
    assert not [ln for ln in access if any(p in ln for p in QUIET_PATHS)], access
    assert len([ln for ln in access if "GET /v1/models 200" in ln]) == 2, access


def wait_for_log(server: ServerProcess, needle: str, count: int = 1, timeout: float = 30) -> None:
    """Wait until ``needle`` appears ``count`` times in the server log (it is written by
    another process, a little after the response)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log_text().count(needle) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"expected {count} x {needle!r} in the log, got\n{server.log_text()}")
