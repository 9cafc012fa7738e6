#!/usr/bin/env bash
# Measure each data dropout preset for a few batches and extrapolate epoch time, influence time and
# memory to the full-size datasets (see benchmarks/gpu_smoke.py). On a GPU machine this takes a few
# minutes; pass --tiny to check the script on a CPU. Extra arguments go to gpu_smoke.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python" "$root/benchmarks/gpu_smoke.py" "$@"
