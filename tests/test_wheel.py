"""The distribution as a stranger gets it: ``python -m build`` makes the sdist and, from it, the
wheel; the wheel goes into a fresh virtualenv in a temporary directory (its dependencies from the
package index, constrained by ``requirements/cpu.lock``), where no ``../shared`` is reachable and
no checkout is on ``sys.path``.  There, ``darkpose infer`` finds persons on a photo, ``darkpose
serve`` answers ``/readyz`` and ``POST /pose``, and the Python one-liner works, from a directory
holding a user's own ``models.py`` and ``service.py`` (also on ``PYTHONPATH``).

One module-scoped build and install (the install downloads onnxruntime, OpenCV, ... the first
time, then pip's cache serves them).  The time from creating the virtualenv to the first answer
of ``darkpose serve`` is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import IMAGES, REPO, missing_requirement, stop_process

pytestmark = pytest.mark.slow

#: What a fresh clone holds that ``python -m build`` reads (darkpose/ links to the other three).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "darkpose", "service", "models", "exporters")
CPU_LOCK = REPO / "requirements" / "cpu.lock"
PHOTO = IMAGES / "000000211325.jpg"
#: The wheel must stay below this (the packaged ONNX models are most of it).
MAX_WHEEL_BYTES = 25 * 1024 * 1024
#: Names that must never be inside the wheel or the sdist (tests, benchmarks, caches).
FORBIDDEN = ("tests/", "bench/", "__pycache__", ".pyc", ".pytest_cache", ".mypy_cache")
#: The model without a licence: a test fixture read from ../shared, never shipped (its card is).
UNSHIPPABLE = "pose_simplepose_256x192.onnx"
INSTALL_TIMEOUT_S = 1200
READY_TIMEOUT_S = 180.0
#: A user's own modules named like the repository's folders; importing either one is an error.
USER_MODULE = "raise ImportError('the user\\'s own {name}.py was imported by darkpose')\n"


@dataclass
class Built:
    root: Path
    wheel: Path
    sdist: Path


@dataclass
class Installed(Built):
    venv: Path
    user_dir: Path
    photo: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self) -> dict[str, str]:
        """The caller's environment minus anything that points into the checkout."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("DARKPOSE_") and k not in drop
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(self.user_dir)  # the user's models.py / service.py come first
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            cwd=self.user_dir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _copy_sources(dst: Path) -> None:
    """The files of a fresh clone that the build reads, links kept as links."""
    dst.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, dst / name)


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        pytest.fail(f"expected {what} to succeed, got exit {proc.returncode}:\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``python -m build`` on the files of a fresh clone: the sdist, then the wheel from it."""
    pytest.importorskip("build", reason="needs `build` (the dev extra)")
    root = tmp_path_factory.mktemp("wheel")
    if (root.parent / "shared").exists() or (root / ".." / ".." / "shared").exists():
        pytest.fail(f"expected no shared/ beside {root}, got one")
    src, dist = root / "src", root / "dist"
    _copy_sources(src)
    # Without build isolation: the dev environment's setuptools builds (no download).
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    _check(build, "python -m build (sdist, then the wheel from it)")
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    return Built(root, wheel, sdist)


@pytest.fixture(scope="module")
def installed(built: Built) -> Installed:
    """The wheel in a fresh virtualenv (dependencies under requirements/cpu.lock)."""
    root, wheel = built.root, built.wheel
    photo = root / "photo.jpg"
    shutil.copy(PHOTO, photo)
    user_dir = root / "user"
    user_dir.mkdir()
    for name in ("models", "service", "exporters"):
        (user_dir / f"{name}.py").write_text(USER_MODULE.format(name=name))

    venv = root / "venv"
    inst = Installed(root, wheel, built.sdist, venv, user_dir, photo)
    start = time.monotonic()
    _check(
        subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                       timeout=120),
        "python -m venv",
    )  # fmt: skip
    pip = [str(inst.bin / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    proc = subprocess.run(
        [*pip, "-c", str(CPU_LOCK), f"{wheel}[cpu]"],
        cwd=root, env=inst.env(), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
    )  # fmt: skip
    if proc.returncode != 0 and "NewConnectionError" in proc.stderr:
        missing_requirement(f"needs the package index to install the wheel's dependencies: "
                            f"{proc.stderr[-500:]}")  # fmt: skip
    _check(proc, f"pip install -c {CPU_LOCK.name} {wheel.name}[cpu]")
    inst.timings = {"start": start, "install_s": time.monotonic() - start}
    return inst


# --- the files ---------------------------------------------------------------------------------


def test_wheel_holds_one_import_package_and_nothing_else(built: Built) -> None:
    names = zipfile.ZipFile(built.wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and top - dist_info == {"darkpose"}, sorted(top)
    bad = [n for n in names if any(f in n for f in FORBIDDEN) or n.endswith(UNSHIPPABLE)]
    assert not bad, f"expected no tests/bench/caches/SimplePose model in the wheel, got {bad}"
    onnx = {Path(n).name for n in names if n.endswith(".onnx")}
    assert onnx == {p.name for p in (REPO / "darkpose" / "zoo").glob("*.onnx")}
    for pkg in ("service/api", "service/core", "service/runtime", "models", "exporters"):
        assert f"darkpose/{pkg}/__init__.py" in names, f"expected darkpose/{pkg} in the wheel"
    licences = [n for n in names if n.endswith(("/LICENSE", "/NOTICE.md"))]
    assert len(licences) >= 2, f"expected LICENSE and the zoo NOTICE, got {licences}"
    size = built.wheel.stat().st_size
    print(f"\nwheel {built.wheel.name}: {size / 1e6:.1f} MB")
    assert size < MAX_WHEEL_BYTES, f"expected a wheel below 25 MB, got {size / 1e6:.1f} MB"


def test_sdist_installs_the_same_package(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        members = tar.getnames()
    bad = [m for m in members if any(f in m for f in FORBIDDEN) or m.endswith(UNSHIPPABLE)]
    assert not bad, f"expected no tests/bench/caches/SimplePose model in the sdist, got {bad}"
    target = built.root / "sdist-site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(built.sdist)],
        cwd=built.root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    _check(proc, f"pip install {built.sdist.name}")
    from_sdist = {
        p.relative_to(target).as_posix()
        for p in (target / "darkpose").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    from_wheel = {n for n in zipfile.ZipFile(built.wheel).namelist() if n.startswith("darkpose/")}
    assert from_sdist == from_wheel


def test_deploy_import_paths_are_in_the_wheel(built: Built) -> None:
    """The Ray Serve configs (and the KubeRay manifest, which embeds serve_config.yaml) import
    the application from the installed package, not from a checkout."""
    names = set(zipfile.ZipFile(built.wheel).namelist())
    configs = sorted((REPO / "deploy").glob("serve_config*.yaml"))
    assert configs
    for config in configs:
        for app in yaml.safe_load(config.read_text())["applications"]:
            module, _, attr = app["import_path"].partition(":")
            assert module.startswith("darkpose.") and attr, app["import_path"]
            assert f"{module.replace('.', '/')}.py" in names, f"{config.name}: {module}"


# --- the fresh virtualenv ------------------------------------------------------------------------


def test_infer_finds_persons_outside_any_checkout(installed: Installed) -> None:
    start = time.monotonic()
    proc = installed.run(str(installed.bin / "darkpose"), "infer", str(installed.photo),
                         "--no-progress")  # fmt: skip
    infer_s = time.monotonic() - start
    _check(proc, "darkpose infer")
    results = json.loads(proc.stdout)
    assert len({r["image_id"] for r in results}) == 1 and len(results) >= 1, results
    assert "Traceback" not in proc.stderr and "imported by darkpose" not in proc.stderr
    install_s = installed.timings["install_s"]
    print(
        f"\nfresh venv: install {install_s:.1f} s + first `darkpose infer` (a cold process) "
        f"{infer_s:.1f} s = {install_s + infer_s:.1f} s to the first answer"
    )


def test_python_one_liner(installed: Installed) -> None:
    code = (
        "import json, sys, darkpose; from darkpose import PoseEstimator; "
        f"poses = PoseEstimator()({str(installed.photo)!r}); "
        "print(json.dumps({'n': len(poses.to_coco()), 'version': darkpose.__version__, "
        "'file': darkpose.__file__, 'path': sys.path}))"
    )
    proc = installed.run(str(installed.bin / "python"), "-c", code)
    _check(proc, "the PoseEstimator one-liner")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] >= 1
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert out["version"] == project["version"]  # from the installed metadata
    assert Path(out["file"]).is_relative_to(installed.venv)
    assert not [p for p in out["path"] if p and Path(p).resolve().is_relative_to(REPO)], out["path"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(installed: Installed) -> Iterator[str]:
    port = _free_port()
    log = installed.root / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(installed.bin / "darkpose"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=installed.user_dir, env=installed.env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    installed.timings["serve_start"] = time.monotonic()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"expected darkpose serve to stay up, it exited {proc.returncode}:\n"
                            f"{log.read_text()[-3000:]}")  # fmt: skip
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"expected /readyz 200 within {READY_TIMEOUT_S:.0f} s, got none:\n"
                            f"{log.read_text()[-3000:]}")  # fmt: skip
            time.sleep(0.2)
        yield base
    finally:
        stop_process(proc)


def test_serve_answers_pose_from_a_directory_with_user_modules(
    installed: Installed, served: str
) -> None:
    ready = httpx.get(served + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    r = httpx.post(
        served + "/pose",
        content=installed.photo.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    serve_s = time.monotonic() - installed.timings["serve_start"]
    assert r.status_code == 200, r.text
    assert len(r.json()["persons"]) >= 1, r.json()
    log = (installed.root / "serve.log").read_text()
    assert "imported by darkpose" not in log and "Traceback" not in log, log[-3000:]
    print(
        f"\nfresh venv: `darkpose serve` start to the first POST /pose answer {serve_s:.1f} s "
        f"(+ install: {installed.timings['install_s'] + serve_s:.1f} s)"
    )
