#!/usr/bin/env bash
# The H200 check, in one call: install any carried wheels, run bench/gpu_check.py
# (under 5 minutes), keep its output.  Run from the repository root:
#     bash bench/gpu_check.sh            # prints a summary table last
# Carried wheels go in .whl/ in the repo root (git-ignored).  On the H200 image
# of 2026-12 they were: numpy 2.4.6 (the image's 2.5.2 lacks np.row_stack,
# which numba-cuda 0.30.4 needs), and for the LocalCUDACluster run dask and
# distributed 2026.7.1, dask-cuda 26.10.0, rapids-dask-dependency 26.10.0,
# partd, locket, tblib, zict, tornado (bench/RESULTS.md, GPU check).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"
timeout 290 python3 bench/gpu_check.py "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
