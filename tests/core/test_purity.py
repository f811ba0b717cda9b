"""darkpose.service.core must stay importable without torch, onnxruntime or the web stack."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

FORBIDDEN = ("torch", "onnxruntime", "fastapi", "starlette")

SCRIPT = f"""
import importlib, json, pkgutil, sys
import darkpose.service.core
names = ["darkpose.service.core"]
for info in pkgutil.walk_packages(darkpose.service.core.__path__, "darkpose.service.core."):
    importlib.import_module(info.name)
    names.append(info.name)
forbidden = {FORBIDDEN!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print(json.dumps({{"modules": names, "loaded": loaded}}))
"""


def test_core_imports_no_runtime_or_web_framework() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the walk really found the modules
    assert {
        "darkpose.service.core.errors",
        "darkpose.service.core.types",
        "darkpose.service.core.io",
    } <= set(result["modules"])
    assert result["loaded"] == [], f"expected no {FORBIDDEN} in sys.modules, got {result['loaded']}"
