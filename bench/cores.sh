#!/usr/bin/env bash
# Served images/s against one single-thread pipeline per core, on a machine with many cores:
# bench/threads.py over intra-op threads × batcher workers, then bench/load.py with the
# defaults.  Meant to run as one call on a borrowed machine whose Python lacks the service's
# web stack: wheels for it, if carried in .whl/ (prepared where pip works, see
# docs/development.md#benchmarks-on-a-borrowed-machine), are installed to /tmp/site first.
#
#   bash bench/cores.sh                     # THREADS=0,1 WORKERS=2,4,8 DURATION=10
#   THREADS=0,1,2 WORKERS=2,4,8,16 bash bench/cores.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PY" bench/threads.py --threads-grid "${THREADS:-0,1}" --workers-grid "${WORKERS:-2,4,8}" \
    --duration "${DURATION:-10}" --ceiling-seconds 5
"$PY" bench/load.py --duration "${DURATION:-10}" --ceiling-seconds 5 --modes on
