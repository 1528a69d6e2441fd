"""Where label columns' memory comes from.

glibc serves every block over a few MiB with its own ``mmap`` and unmaps it
on ``free``.  A chunk of candles allocates and frees hundreds of MiB of
label columns, so every chunk would fault all of that memory in afresh;
on virtual machines that costs more than the label arithmetic itself
(measured in bench/RESULTS.md).  Two remedies:

- ``empty``, always on and scoped to gpubackfill: the kernels' outputs and
  column-sized scratch are allocated from Arrow's mimalloc pool, which keeps
  freed pages for reuse for a while instead of unmapping them.  The columns
  become Arrow arrays over those buffers, and a buffer returns to the pool
  only when the last array (or table) using it is dropped.  The rest of the
  process keeps its allocator.
- ``keep_freed_memory``, opt-in and process-wide: glibc keeps freed memory
  in its heap (RSS stays at its high-water mark).  Long-running processes
  (the engine, the CLI, the benchmarks) call it; it also covers the numpy
  and Arrow temporaries outside the kernels.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

# mallopt(3) parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; True when applied.

    Called by the engine, the CLI and the benchmarks.  A no-op returning
    False where libc is not glibc (macOS, musl).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (mallopt(_M_MMAP_MAX, 0) == 1
          and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
          and mallopt(_M_TOP_PAD, 64 << 20) == 1)
    _applied = ok
    return ok


@functools.cache
def output_pool() -> pa.MemoryPool | None:
    """Arrow's mimalloc pool, or None where pyarrow was built without it.

    Named, not taken from ``pa.default_memory_pool()`` (which an environment
    variable can switch): Arrow's jemalloc pool faulted its large blocks in
    afresh on every call, like glibc (bench/RESULTS.md)."""
    try:
        return pa.mimalloc_memory_pool()
    except NotImplementedError:
        return None


def empty(shape: int | tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """Like ``np.empty`` (writable, C-contiguous, 64-byte aligned), with the
    memory from ``output_pool()`` (``np.empty`` itself where there is none).
    The array holds its Arrow buffer, and whatever wraps the array
    (``pa.py_buffer``) holds the array."""
    return _empty_from(output_pool(), shape, dtype)


def empty_from(pool: pa.MemoryPool | None) -> Callable[..., np.ndarray]:
    """``empty`` over another pool (the benchmark compares them)."""
    return functools.partial(_empty_from, pool)


def _empty_from(pool: pa.MemoryPool | None, shape: int | tuple[int, ...],
                dtype: Any = np.float64) -> np.ndarray:
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    count = math.prod(shape)
    if pool is None or count == 0:
        return np.empty(shape, dtype)
    buf = pa.allocate_buffer(count * dtype.itemsize, memory_pool=pool)
    return np.frombuffer(buf, dtype, count).reshape(shape)


class PooledKernels:
    """A kernels module whose allocating launchers (its ``ALLOCATING``
    names) get ``empty=`` bound; everything else passes through."""

    def __init__(self, kernels: Any, factory: Callable[..., np.ndarray] = empty) -> None:
        self._kernels = kernels
        for name in getattr(kernels, "ALLOCATING", ()):
            setattr(self, name, functools.partial(getattr(kernels, name), empty=factory))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kernels, name)
