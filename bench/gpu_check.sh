#!/usr/bin/env bash
# The H200 check, in one call: install any carried wheels, run bench/gpu_check.py
# (under 5 minutes), keep its output.  Run from the repository root:
#     bash bench/gpu_check.sh            # prints a summary table last
#     GPU_CHECK_NCU=1 bash bench/gpu_check.sh   # then an Nsight Compute profile
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
rc=${PIPESTATUS[0]}
# GPU_CHECK_NCU=1: what bounds each kernel (Nsight Compute, on a launch of
# the second round, so compilation and warm-up stay out), in $out/ncu.txt.
if [ "${GPU_CHECK_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
  : > "$out/ncu.txt"
  # name and launches to skip: sigma's scans launch 5 times a scan at 2e7.
  for k in "_mfe_tile_kernel 1" "_scan_local 10" "_tb_kernel 1" "_vsr_kernel 1"; do
    set -- $k
    timeout 120 ncu --kernel-name "regex:$1" --launch-skip "$2" --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis python3 bench/gpu_check.py --profile-target 2e7 \
      >> "$out/ncu.txt" 2>&1
  done
  grep -E '^  [a-z_]+.*\(|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Duration|Achieved Occupancy' \
    "$out/ncu.txt" | head -60
fi
exit "$rc"
