"""bench/gpu.py exits cleanly, saying why, where there is no GPU."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest

from tests.conftest import REPO


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="a CUDA onnxruntime is installed: the script would measure, not exit",
)
def test_gpu_bench_without_a_gpu_exits_zero_with_the_reason() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "no GPU to measure" in out.stdout
    assert "CUDAExecutionProvider" in out.stdout
