"""The layering (``[tool.importlinter]`` in pyproject.toml) holds, and core runs without the
model runtimes, the web stack and torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = str(exe) if exe.is_file() else shutil.which("lint-imports")
    assert cmd is not None, "expected import-linter installed (the dev extra), got no lint-imports"
    return subprocess.run(
        [cmd, "--no-cache", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_the_import_contracts_hold() -> None:
    proc = _lint_imports()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "layers:" in proc.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    """The tool reads this code base: a contract that the code breaks (core uses numpy) fails."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "darkpose"\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "core without numpy"\ntype = "forbidden"\n'
        'source_modules = ["darkpose.service.core"]\nforbidden_modules = ["numpy"]\n',
        encoding="utf-8",
    )
    proc = _lint_imports("--config", str(config))
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and "darkpose.service.core.codec -> numpy" in proc.stdout


BLOCKED = ("onnxruntime", "openvino", "fastapi", "starlette", "uvicorn", "ray", "torch")

SCRIPT = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # importing it now raises ImportError
import numpy as np
from darkpose.service.core.codec import decode_heatmaps, encode_heatmaps
from darkpose.service.core.pipeline import PipelineOptions
from darkpose.service.core.cards import read_card, ZOO_DIR
maps, _ = encode_heatmaps(np.array([[[10.3, 20.6]]]), np.ones((1, 1)), (48, 64), sigma=2.0)
coords, scores = decode_heatmaps(maps, "dark", PipelineOptions().blur_kernel or 11)
card = read_card(next(ZOO_DIR.glob("*.card.json")))
print(round(float(coords[0, 0, 0]), 1), round(float(coords[0, 0, 1]), 1), card.kind)
"""


def test_core_works_without_runtimes_web_stack_or_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    x, y, _kind = proc.stdout.split()
    assert abs(float(x) - 10.3) <= 0.1 and abs(float(y) - 20.6) <= 0.1
