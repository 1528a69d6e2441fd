"""Compile every CUDA kernel to PTX for sm_90 without a GPU.

numba-cuda asks the current device for its compute capability when it
compiles device functions, even inside ``compile_ptx`` for an explicit
``cc``; with no driver here, that one query is answered with (9, 0).
Everything else (typing, lowering, NVVM) is the real compiler, so type
errors in the kernels are caught on machines without a GPU.
"""

from __future__ import annotations

import sys
import types

import numba.cuda.dispatcher as dispatcher
from numba import cuda

dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))

from kernels import cuda as k  # noqa: E402

f8, i8 = "float64[:]", "int64"
f8_2d = "float64[:, :]"
SIGNATURES = {
    "_log_returns_kernel": f"void({f8}, {f8})",
    "_scan_local": f"void({f8}, float64, {i8}, {f8}, {f8})",
    "_scan_fixup": f"void({f8}, float64, {i8}, {i8}, {f8})",
    "_scan_serial": f"void({f8}, float64, {i8}, float64, {f8})",
    "_cov_terms": f"void({f8}, {f8}, {i8}, float64, float64, float64, {f8})",
    "_scale_inv": f"void({f8}, {i8}, float64, {f8})",
    "_sigma_out": f"void({f8}, {i8}, float64, {f8})",
    "_rolling_kernel": f"void({f8}, {i8}, {f8})",
    "_block_extremes": f"void({f8}, {i8}, boolean, {f8})",
    "_tb_kernel": (f"void({f8}, {f8}, {f8}, {f8}, {f8}, int8[:], boolean, {i8}, float64, float64, "
                   f"{i8}, {i8}, float64, {i8}, {f8}, {f8}, {f8}, {f8}, int8[:], int8[:], int32[:], "
                   f"{f8}, uint8[:])"),
    "_meta_kernel": f"void(int8[:], {f8}, int8[:])",
    "_grid_kernel": (f"void({f8}, {f8}, {f8}, {f8}, {f8}, {f8}, {f8}, int64[:], int64[:], int64[:], "
                     f"{i8}, {i8}, float64, {i8}, {f8_2d}, {f8}, {f8}, {f8}, {f8}, int8[:], int32[:], "
                     f"{f8}, uint8[:])"),
    "_vsr_kernel": f"void({f8}, {f8}, int64[:], {f8_2d})",
    "_runs_kernel": (f"void({f8}, {f8}, {i8}, {i8}, {i8}, {f8}, int64[:], {f8}, int64[:], "
                     f"{f8}, int64[:], {f8}, int64[:])"),
    "_tb_resolve_kernel": (f"void(int64[:], int32[:], int64[:], int64[:], {f8}, {f8}, {f8}, {f8}, "
                           f"{f8}, int8[:], boolean, float64, float64, int8[:], int8[:], {f8}, "
                           f"uint8[:], int64[:])"),
    "_concurrency_kernel": f"void(uint8[:], int32[:], {i8}, int64[:])",
    "_weights_kernel": f"void({i8}, uint8[:], int32[:], int64[:], {f8}, {f8}, {f8})",
    "_fixed_horizon_kernel": f"void({f8}, {f8}, {i8}, float64, float64, int8[:], {f8})",
    "_log_kernel": f"void({f8}, {f8})",
    "_trend_kernel": f"void({f8}, {i8}, {i8}, {f8_2d}, int8[:], {f8}, int32[:])",
    "_mfe_tile_kernel": f"void({f8}, {f8}, {f8}, {i8}, {i8}, {f8}, {f8}, int32[:], int32[:])",
    "_mfe_kernel": (f"void({f8}, {i8}, {i8}, {i8}, {f8}, int64[:], {f8}, int64[:], {f8}, int64[:], "
                    f"{f8}, int64[:], {f8}, {f8}, int32[:], int32[:])"),
}


def main() -> int:
    kernels = sorted(n for n, v in vars(k).items() if hasattr(v, "py_func") and n.startswith("_"))
    missing = sorted(set(kernels) - set(SIGNATURES))
    if missing:
        print(f"kernels without a signature here: {missing}")
        return 1
    for name in kernels:
        ptx, _ = cuda.compile_ptx(getattr(k, name).py_func, SIGNATURES[name], cc=(9, 0))
        assert ".target sm_90" in ptx, name
        print(f"{name}: {len(ptx):,} bytes of PTX for sm_90")
    print(f"compiled {len(kernels)} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
