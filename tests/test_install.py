"""A real non-editable install (``pip install --target``, no dependencies, no build isolation:
nothing is downloaded) run from outside the source tree: one import package, ``darkpose``, whose
packaged models are the default model directory; a missing model directory says how to set
``DARKPOSE_MODEL_DIR``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IMAGES, REPO

#: What the source tree needs for ``pip install``: darkpose/ links service/, models/ and
#: exporters/ (copied as directories here: copytree follows the links).
SOURCES = ("darkpose", "pyproject.toml", "README.md", "LICENSE")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    target = root / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*cmd, "--no-index", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def run_installed(
    site: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DARKPOSE_")}, **(env or {})}
    env["PYTHONPATH"] = str(site)  # the installed copy; -P: not the working directory
    return subprocess.run(
        [sys.executable, "-P", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_installed_package_is_one_import_name_with_its_models(site: Path, tmp_path: Path) -> None:
    code = (
        "import json, darkpose, darkpose.service; from darkpose.service.settings import Settings; "
        "print(json.dumps({'darkpose': darkpose.__file__, 'service': darkpose.service.__file__, "
        "'model_dir': str(Settings().model_dir)}))"
    )
    proc = run_installed(site, tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert Path(info["service"]).is_relative_to(site)
    assert Path(info["darkpose"]).is_relative_to(site)
    assert Path(info["model_dir"]) == site / "darkpose" / "zoo"
    top = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")}
    assert top - {"bin"} == {"darkpose"}, top
    shipped = {p.name for p in (site / "darkpose" / "zoo").glob("*.onnx")}
    assert shipped == {p.name for p in (REPO / "darkpose" / "zoo").glob("*.onnx")}
    assert "pose_simplepose_256x192.onnx" not in shipped


def test_installed_package_without_models_says_how_to_set_the_model_dir(
    site: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    photo = str(IMAGES / "000000211325.jpg")
    env = {"DARKPOSE_MODEL_DIR": str(tmp_path / "nowhere")}
    proc = run_installed(
        site, elsewhere, "-m", "darkpose.service.cli", "infer", photo, "--no-progress", env=env
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "set DARKPOSE_MODEL_DIR=" in errors[0], proc.stderr
