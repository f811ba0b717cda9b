#!/usr/bin/env bash
# Optional `openvino` extra (OpenVINO backend, bf16/int8, `darkpose quantize`): installed into
# CI's active venv so tests/runtime/test_openvino.py and tests/test_quantize.py run there.
# The version pins live in pyproject.toml's `openvino` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[cpu,openvino]"
python -c "import openvino, nncf; print('openvino', openvino.__version__, 'nncf', nncf.__version__)"
