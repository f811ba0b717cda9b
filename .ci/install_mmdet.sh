#!/usr/bin/env bash
# Optional extra "mmdet" for the HTC detector (service/runtime/htc.py), installed into the
# active virtualenv before the tests (called by .ci/run).  Idempotent:
#   * nothing to do when mmcv (with its compiled ops), mmengine and mmdet already import at the
#     pinned versions;
#   * mmcv 2.1.0 is built from source with its C++ ops against the installed torch (CPU) once and
#     the wheel is kept in ~/.cache/darkpose-mmcv/<python>-torch<version>/ — a second run
#     installs the cached wheel (seconds instead of ~20-40 min on 2 cores).
# Versions: mmdet 3.3.0 asserts mmcv>=2.0.0rc4,<2.2.0 → mmcv 2.1.0; mmengine 0.10.7.
# mmengine and mmcv are installed with --no-deps: their metadata pulls opencv-python, which
# would overwrite opencv-python-headless's cv2 (and needs libGL); the remaining runtime
# dependencies are listed explicitly below.  torchvision is not needed for HTC inference.
set -euo pipefail

MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
TORCH_VERSION=2.13.0

log() { echo "[install_mmdet] $*"; }

if [ -z "${VIRTUAL_ENV:-}" ]; then
    log "warning: no virtualenv active; installing into $(command -v python)"
fi

check() {
    python - "$MMCV_VERSION" "$MMENGINE_VERSION" "$MMDET_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import mmcv, mmengine, mmdet
from mmcv.ops import RoIAlign, nms  # compiled ops present
assert (mmcv.__version__, mmengine.__version__, mmdet.__version__) == tuple(sys.argv[1:4])
EOF
}

if check; then
    log "mmcv $MMCV_VERSION (ops), mmengine $MMENGINE_VERSION, mmdet $MMDET_VERSION already installed"
    exit 0
fi

start=$(date +%s)
# torch first (the CPU build; pip's configured find-links / index provide it), then the build
# tools mmcv's setup.py needs without build isolation (it imports pkg_resources: setuptools<81).
python -m pip install -q "torch==${TORCH_VERSION}" "setuptools<81" wheel ninja

torch_version=$(python -c "import torch; print(torch.__version__)")
py_tag=$(python -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
cache="${HOME}/.cache/darkpose-mmcv/${py_tag}-torch${torch_version}"
mkdir -p "$cache"
wheel=$(ls "$cache"/mmcv-"${MMCV_VERSION}"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    log "building mmcv ${MMCV_VERSION} with ops against torch ${torch_version} (log: $cache/build.log)"
    if ! MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        python -m pip wheel --no-build-isolation --no-deps -v "mmcv==${MMCV_VERSION}" \
        -w "$cache" >"$cache/build.log" 2>&1; then
        log "mmcv build failed; last lines of $cache/build.log:"
        tail -n 40 "$cache/build.log"
        exit 1
    fi
    wheel=$(ls "$cache"/mmcv-"${MMCV_VERSION}"-*.whl | head -n1)
    log "built $(basename "$wheel") in $(( $(date +%s) - start ))s"
else
    log "using cached $(basename "$wheel")"
fi

python -m pip install -q --no-deps "$wheel" "mmengine==${MMENGINE_VERSION}" "mmdet==${MMDET_VERSION}"
# runtime dependencies of mmcv / mmengine / mmdet, minus opencv-python (headless is installed)
python -m pip install -q addict yapf termcolor rich matplotlib pyyaml packaging pillow \
    pycocotools scipy shapely six terminaltables tqdm opencv-python-headless

if ! check; then
    log "installed, but mmcv/mmengine/mmdet do not import:"
    python -c "import mmcv, mmengine, mmdet; from mmcv.ops import RoIAlign, nms"
    exit 1
fi
log "mmcv ${MMCV_VERSION} (ops) + mmengine ${MMENGINE_VERSION} + mmdet ${MMDET_VERSION} ready in $(( $(date +%s) - start ))s"
