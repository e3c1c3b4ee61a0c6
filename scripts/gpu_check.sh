#!/usr/bin/env bash
# The one prepared GPU check: every shipped recipe on CUDA (bf16, a short run each) and each benchmark once on
# CUDA, then one table (scripts/gpu_check.py). Logs and runs go to $OUT (the device tool's returned folder) or
# /tmp/mmssl-gpu-check. Extra arguments go to gpu_check.py, e.g. --skip-bench or --only clip_world.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
exec "$PY" scripts/gpu_check.py --out "${OUT:-/tmp/mmssl-gpu-check}/gpu-check" "$@"
