"""``darkpose serve`` fails fast: a model load that fails for good ends the process.

A missing or broken model file, or ``DARKPOSE_PROVIDERS=cuda`` where no CUDA provider loads
(this machine: onnxruntime's CPU build), must end ``darkpose serve`` with one error line and a
non-zero exit instead of a server whose ``/healthz`` says 200 while every ``/pose`` is a 503.
``auto`` serves on the CPU with exactly one warning, and the providers in use show in the
startup log, ``/v1/models`` and ``darkpose_model_info{providers}``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

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


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_truncated_model, "truncated.onnx"),
        (lambda tmp: tmp / "missing.onnx", "missing.onnx"),
    ],
    ids=["truncated", "missing"],
)
def test_bad_pose_model_ends_serve(
    tmp_path: Path, make: Callable[[Path], Path], needle: str
) -> None:
    path = make(tmp_path)
    proc = serve_until_exit({"DARKPOSE_POSE_MODELS": f'["{path}"]'})
    line = assert_one_line_failure(proc, "models: failed to load", needle)
    assert "expected" in line and "got" in line, line


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has the CUDA provider")
def test_cuda_without_a_cuda_provider_ends_serve() -> None:
    proc = serve_until_exit({"DARKPOSE_PROVIDERS": "cuda"})
    assert_one_line_failure(proc, "CUDAExecutionProvider", "providers=auto|cpu")


def test_auto_serves_on_cpu_with_one_warning(tmp_path: Path) -> None:
    server = ServerProcess(
        {"DARKPOSE_PROVIDERS": "auto"}, log=tmp_path / "serve.log", log_level="INFO"
    )
    try:
        server.wait_ready(90)
        models = httpx.get(server.base + "/v1/models", timeout=5).json()
        metrics = httpx.get(server.base + "/metrics", timeout=5).text
    finally:
        returncode = server.terminate()
    text = server.log_text()
    assert returncode in (0, -signal.SIGTERM), text  # uvicorn re-raises SIGTERM after draining
    used = "CUDAExecutionProvider" if HAS_CUDA else "CPUExecutionProvider"
    assert models["providers"].split(",")[0] == used, models
    assert f'providers="{models["providers"]}"' in metrics
    loaded = [ln for ln in darkpose_lines(text, "INFO") if "models loaded" in ln]
    assert len(loaded) == 1 and f"(providers: {models['providers']})" in loaded[0], text
    warnings = [ln for ln in darkpose_lines(text, "WARNING") if "providers=auto" in ln]
    assert len(warnings) == (0 if HAS_CUDA else 1), text
    if warnings:
        assert "running on CPUExecutionProvider" in warnings[0], warnings
    assert not darkpose_lines(text, "ERROR"), text
