#!/usr/bin/env bash
# Regenerate the lock (constraints) files of requirements/ from pyproject.toml with uv, for
# CPython 3.11 on Linux x86_64 (the Docker images' and CI's interpreter):
#
#   requirements/refresh.sh              # re-resolve; pins that still satisfy pyproject stay
#   requirements/refresh.sh --upgrade    # move every pin to the newest allowed release
#
# Extra arguments go to every `uv pip compile` (e.g. --upgrade-package onnxruntime).  Needs uv
# (`pip install uv`) and PyPI (or UV_DEFAULT_INDEX).
#
#   ci.lock   what CI installs: extras cpu, export, dev, openvino, ray (mmdet keeps its own
#             script, .ci/install_mmdet.sh); resolved first
#   cpu.lock  extra cpu      (docker/Dockerfile.cpu)
#   gpu.lock  extra gpu      (docker/Dockerfile.gpu)
#   ray.lock  extras cpu,ray (docker/Dockerfile.ray)
#
# cpu/gpu/ray are resolved under ci.lock's pins, so a package they share with CI has the version
# CI tested.  torch (extra `export`) is kept out of uv's resolution: PyPI's torch is the CUDA build
# and pulls several GB of nvidia-* packages; CI installs the CPU build (PyTorch's CPU index or a
# local wheel), whose own requirements are listed in torch-cpu.in and locked here; the torch pin
# itself is copied from pyproject.toml's `export` extra.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null; then
    echo "refresh.sh: expected uv on PATH (pip install uv), got none" >&2
    exit 1
fi

torch_pin=$(python3 - <<'PY'
import tomllib

extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["export"]
pins = [r.replace(" ", "") for r in extra if r.replace(" ", "").startswith("torch==")]
if len(pins) != 1:
    raise SystemExit(f"refresh.sh: expected one torch==X pin in the export extra, got {extra}")
print(pins[0])
PY
)

no_torch=$(mktemp)
trap 'rm -f "$no_torch"' EXIT
echo 'torch ; sys_platform == "never"' >"$no_torch"

compile() {
    local out=$1
    shift
    uv pip compile pyproject.toml "$@" \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --custom-compile-command "requirements/refresh.sh" \
        --quiet -o "requirements/$out" "${extra_args[@]}"
}
extra_args=("$@")

compile ci.lock requirements/torch-cpu.in --override "$no_torch" \
    --extra cpu --extra export --extra dev --extra openvino --extra ray
cat >>requirements/ci.lock <<LOCK
# torch: the CPU build, not resolved by uv (see requirements/torch-cpu.in)
${torch_pin}
LOCK

compile cpu.lock --extra cpu -c requirements/ci.lock
compile gpu.lock --extra gpu -c requirements/ci.lock
compile ray.lock --extra cpu --extra ray -c requirements/ci.lock
echo "requirements/{ci,cpu,gpu,ray}.lock refreshed (${torch_pin} pinned from pyproject.toml)"
