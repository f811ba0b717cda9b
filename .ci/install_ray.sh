#!/usr/bin/env bash
# Optional `ray` extra (Ray Serve scale-out, tests/ray): installed into CI's active venv.
# The version pin lives in pyproject.toml's `ray` extra (ray[serve]==...).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[cpu,ray]"
python -c "import ray, ray.serve; print('ray', ray.__version__)"
