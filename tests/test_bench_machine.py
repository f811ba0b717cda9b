"""bench/machine.py: the CPU line every benchmark prints with its tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.machine import cpu_line
from tests.conftest import REPO

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu sse2 sse4_1 sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile lm
"""


def test_cpu_line_names_the_model_and_only_the_vector_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    line = cpu_line(info)
    assert line.startswith("Example CPU 9000; ")
    assert line.endswith("flags sse4_1 sse4_2 avx avx2 fma avx512f avx512_bf16 amx_tile")
    assert " cores; " in line


def test_cpu_line_without_cpuinfo_still_answers(tmp_path: Path) -> None:
    line = cpu_line(tmp_path / "absent")
    assert line.endswith("flags unknown")
    assert " cores; " in line


@pytest.mark.parametrize(
    "script",
    sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name != "machine.py"),
)
def test_every_benchmark_prints_the_cpu(script: str) -> None:
    """Each benchmark's tables come with the CPU they were measured on."""
    assert "cpu_line()" in (REPO / "bench" / script).read_text()
