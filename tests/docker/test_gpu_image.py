"""One CUDA major everywhere: the `gpu` extra's onnxruntime-gpu against Dockerfile.gpu's base.

``ORT_GPU_CUDA`` is the CUDA version each onnxruntime-gpu release on PyPI was built for
(``onnxruntime/capi/build_and_package_info.py``, ``cuda_version``; releases before 1.21 do not
record it).  The pin in pyproject.toml may only allow releases built for the base image's CUDA
major with a minor no newer than the image's; a test downloads the release the pin resolves to
(``pip download --no-deps``) and checks the table against the real wheel.  With that wheel
(CUDA compiled in, no CUDA libraries on this machine) ``darkpose serve`` must end on
``providers=cuda`` and fall back with one warning on ``auto``;
``darkpose.service.runtime.gpu_check`` (the
image's build-time check) must accept the real pair and refuse a mismatched one.

When a new onnxruntime-gpu comes out: add it to the table (the download test says what the
wheel reports) and move the pin and/or ``CUDA_IMAGE`` in docker/Dockerfile.gpu together.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from darkpose.service.runtime.gpu_check import compatible, image_cuda_version
from tests.conftest import MODELS, POSE_ONNX, REPO, missing_requirement
from tests.docker.conftest import DOCKERFILES, free_port
from tests.test_locks import read_lock

GPU_LOCK = REPO / "requirements" / "gpu.lock"

#: onnxruntime-gpu release → ``build_and_package_info.cuda_version`` of its PyPI wheels
#: (read from the cp311 manylinux x86_64 wheels on 2026-12-01).
ORT_GPU_CUDA: dict[str, str] = {
    "1.21.0": "12.2",
    "1.21.1": "12.2",
    "1.22.0": "12.2",
    "1.23.0": "12.2",
    "1.23.2": "12.2",
    "1.24.1": "12.8",
    "1.24.4": "12.8",
    "1.25.0": "12.8",
    "1.25.1": "12.8",
    "1.26.0": "12.8",
    "1.27.0": "13.0",
    "1.28.0": "13.0",
    "1.29.0": "13.0",
    "1.30.0": "13.0",
    "1.31.0": "13.0",
    "1.31.1": "13.0",
}


def gpu_requirement() -> Requirement:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (req,) = [Requirement(r) for r in extras["gpu"] if Requirement(r).name == "onnxruntime-gpu"]
    return req


def dockerfile_cuda_image() -> str:
    text = DOCKERFILES["gpu"].read_text()
    m = re.search(r"^ARG CUDA_IMAGE=(\S+)$", text, re.MULTILINE)
    assert m, "expected `ARG CUDA_IMAGE=nvidia/cuda:…` in Dockerfile.gpu"
    return m.group(1)


def cuda_problems(spec: SpecifierSet, image: str, table: dict[str, str]) -> list[str]:
    """Why the releases ``spec`` allows would not run on ``image`` (empty: they all do)."""
    runtime = image_cuda_version(image)
    allowed = [v for v in table if Version(v) in spec]
    problems = [
        f"onnxruntime-gpu {v}: {why}"
        for v in allowed
        if (why := compatible(table[v], runtime)) is not None
    ]
    if not allowed:
        problems.append(f"{spec}: expected at least one release of the table, got none")
    if not any(s.operator in ("<", "<=", "==", "~=") for s in spec):
        problems.append(f"{spec}: expected an upper bound (the next release may change CUDA)")
    return problems


def test_gpu_extra_matches_the_dockerfile_cuda() -> None:
    req, image = gpu_requirement(), dockerfile_cuda_image()
    assert cuda_problems(req.specifier, image, ORT_GPU_CUDA) == []
    runtime_major = image_cuda_version(image).split(".")[0]
    allowed = [v for v in ORT_GPU_CUDA if Version(v) in req.specifier]
    assert {ORT_GPU_CUDA[v].split(".")[0] for v in allowed} == {runtime_major}


def test_gpu_lock_pins_a_release_built_for_the_image() -> None:
    """The GPU image installs requirements/gpu.lock's onnxruntime-gpu: a release of the table
    whose CUDA runs on the image's."""
    version = read_lock(GPU_LOCK)["onnxruntime-gpu"]
    assert version in ORT_GPU_CUDA, f"expected {version} in ORT_GPU_CUDA (add what it reports)"
    runtime = image_cuda_version(dockerfile_cuda_image())
    assert compatible(ORT_GPU_CUDA[version], runtime) is None


@pytest.mark.parametrize(
    ("spec", "image", "needle"),
    [
        (">=1.21,<1.27", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04", "CUDA major"),
        (">=1.27,<2", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04", "CUDA major"),
        (">=1.21,<1.28", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04", "1.27.0: CUDA major"),
        (">=1.21,<1.27", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "CUDA minor"),
        (">=1.21", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04", "upper bound"),
        (">=1.17", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "CUDA major"),  # the old pair
    ],
    ids=["image-bumped", "pin-bumped", "pin-widened", "image-minor-older", "no-bound", "issue"],
)
def test_a_one_sided_bump_is_caught(spec: str, image: str, needle: str) -> None:
    problems = cuda_problems(SpecifierSet(spec), image, ORT_GPU_CUDA)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    ("built", "runtime", "ok"),
    [("12.8", "12.8.1", True), ("12.2", "12.8.1", True), ("12.8", "12.6.3", False),
     ("13.0", "12.8.1", False), ("12.8", "13.0.1", False)],
)  # fmt: skip
def test_compatibility_rule(built: str, runtime: str, ok: bool) -> None:
    assert (compatible(built, runtime) is None) is ok


def test_dockerfile_checks_cuda_at_build_and_readiness_at_run() -> None:
    text = DOCKERFILES["gpu"].read_text()
    assert 'python -m darkpose.service.runtime.gpu_check --image "${CUDA_IMAGE}"' in text
    assert "python -m darkpose.service.runtime.gpu_check --load-libraries" in text
    assert "get_available_providers" not in text, "compiled-in is not loadable: check sessions"
    assert "ENV" in text and "DARKPOSE_PROVIDERS=cuda" in text
    # The builder stage re-declares the global ARG so the check sees the runtime base image.
    builder = text.split(" AS runtime")[0].split(" AS builder")[1]
    assert "\nARG CUDA_IMAGE\n" in builder


# --- the real wheel -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gpu_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The onnxruntime-gpu wheel the GPU image installs (the `gpu` extra under
    requirements/gpu.lock; pip download, no install)."""
    dest = tmp_path_factory.mktemp("ort-gpu-wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-c", str(GPU_LOCK), "-d", str(dest),
         str(gpu_requirement())],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    wheels = sorted(dest.glob("onnxruntime_gpu-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
        missing_requirement(f"needs `pip download {gpu_requirement()}` (PyPI), got: {tail}")
    return wheels[0]


@pytest.fixture(scope="session")
def gpu_site(gpu_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's ``onnxruntime`` package unpacked: put it first on PYTHONPATH to run the GPU
    build (its CUDA provider is compiled in; the CUDA libraries it needs are not here)."""
    site = tmp_path_factory.mktemp("ort-gpu-site")
    with zipfile.ZipFile(gpu_wheel) as z:
        z.extractall(site, [n for n in z.namelist() if n.startswith("onnxruntime/")])
    return site


def test_table_matches_the_real_wheel(gpu_wheel: Path) -> None:
    version = gpu_wheel.name.split("-")[1]
    with zipfile.ZipFile(gpu_wheel) as z:
        info = z.read("onnxruntime/capi/build_and_package_info.py").decode()
    m = re.search(r"^cuda_version\s*=\s*'([^']+)'", info, re.MULTILINE)
    assert m, info
    assert version in ORT_GPU_CUDA, f"add onnxruntime-gpu {version}: '{m.group(1)}' to the table"
    assert ORT_GPU_CUDA[version] == m.group(1)
    runtime = image_cuda_version(dockerfile_cuda_image())
    assert m.group(1).split(".")[0] == runtime.split(".")[0]
    assert compatible(m.group(1), runtime) is None


def _gpu_env(gpu_site: Path, port: int, providers: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{gpu_site}{os.pathsep}{REPO}",
        "DARKPOSE_MODEL_DIR": str(MODELS),
        "DARKPOSE_PROVIDERS": providers,
        "DARKPOSE_INTRA_OP_THREADS": "1",
        "DARKPOSE_INTER_OP_THREADS": "1",
        "DARKPOSE_HOST": "127.0.0.1",
        "DARKPOSE_PORT": str(port),
    }


@pytest.fixture(scope="session")
def cuda_does_not_load(gpu_site: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import onnxruntime as o; print(o.__file__, o.__version__)"],
        env={**os.environ, "PYTHONPATH": str(gpu_site)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert str(gpu_site) in probe.stdout, probe.stdout + probe.stderr
    check = subprocess.run(
        [sys.executable, "-m", "darkpose.service.runtime.gpu_check", "--image",
         dockerfile_cuda_image(), "--load-libraries"],
        env={**os.environ, "PYTHONPATH": f"{gpu_site}{os.pathsep}{REPO}"}, cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if check.returncode == 0:
        pytest.skip("the CUDA libraries load on this machine: no CPU-fallback case to test")
    assert "expected libonnxruntime_providers_cuda.so to load" in check.stderr, check.stderr


def test_gpu_check_with_the_real_wheel(gpu_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{gpu_site}{os.pathsep}{REPO}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "darkpose.service.runtime.gpu_check", *args],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    ok = run("--image", dockerfile_cuda_image())
    assert ok.returncode == 0 and ok.stdout.startswith("gpu_check: ok: "), ok.stderr
    bad = run("--image", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04")
    assert bad.returncode == 1 and "CUDA major" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


_HEATMAPS = """
import sys
import numpy as np
import onnxruntime
from darkpose.service.runtime.onnx import create_session, make_batch_dynamic, read_model_bytes
sess = create_session(make_batch_dynamic(read_model_bytes(sys.argv[1])), providers="cpu")
x = np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)
np.save(sys.argv[2], sess.run(None, {sess.get_inputs()[0].name: x})[0])
print(onnxruntime.__file__)
"""


def test_pinned_gpu_build_computes_the_cpu_builds_heatmaps(gpu_site: Path, tmp_path: Path) -> None:
    """The pinned onnxruntime-gpu (its CPU provider here) runs the shared pose model and gets
    the heatmaps of the CPU build (1.21-1.26 reject its spatial=0 BatchNorms unless rewritten)."""
    import numpy as np

    outs = []
    for i, path in enumerate((f"{gpu_site}{os.pathsep}{REPO}", str(REPO))):
        out = tmp_path / f"heatmaps{i}.npy"
        proc = subprocess.run(
            [sys.executable, "-c", _HEATMAPS, str(POSE_ONNX), str(out)],
            env={**os.environ, "PYTHONPATH": path}, cwd=REPO,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (str(gpu_site) in proc.stdout) is (i == 0), proc.stdout
        outs.append(np.load(out))
    assert outs[0].shape == (2, 17, 64, 48)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5, rtol=0)


@pytest.mark.usefixtures("cuda_does_not_load")
def test_cuda_compiled_in_but_not_loadable_ends_serve(gpu_site: Path) -> None:
    """The issue's case: onnxruntime-gpu lists CUDA, the session silently falls back to CPU."""
    proc = subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "serve"],
        cwd=REPO, env=_gpu_env(gpu_site, free_port(), "cuda"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [ln for ln in out.splitlines() if " ERROR darkpose.service." in ln]
    assert len(errors) == 1, out
    assert "expected CUDAExecutionProvider in use for providers=cuda" in errors[0]
    assert "missing library: lib" in errors[0] and "built for CUDA 12" in errors[0]
    assert "Traceback" not in out


@pytest.fixture
def gpu_auto_server(gpu_site: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "darkpose.service.cli", "--log-level", "INFO", "serve"],
            cwd=REPO, env=_gpu_env(gpu_site, port, "auto"), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            yield base, log
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


@pytest.mark.usefixtures("cuda_does_not_load")
def test_auto_falls_back_to_cpu_with_one_warning(gpu_auto_server: tuple[str, Path]) -> None:
    base, log = gpu_auto_server
    models = httpx.get(base + "/v1/models", timeout=5).json()
    assert models["providers"] == "CPUExecutionProvider"
    metrics = httpx.get(base + "/metrics", timeout=5).text
    assert 'providers="CPUExecutionProvider"' in metrics
    text = log.read_text()
    warnings = [ln for ln in text.splitlines() if " WARNING darkpose.service." in ln]
    assert len(warnings) == 1, text
    assert "providers=auto: running on CPUExecutionProvider" in warnings[0]
    assert "CUDAExecutionProvider did not load" in warnings[0]
    assert "(providers: CPUExecutionProvider)" in text
