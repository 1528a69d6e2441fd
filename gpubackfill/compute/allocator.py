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
  and Arrow temporaries outside the kernels.  Once it is applied, ``empty``
  also keeps its own freed blocks of ``REUSE_MIN_BYTES`` or more (each
  column of a 1M-row chunk, a barrier_grid's outputs: 378 MB a million
  rows) and hands them out again: mimalloc gives such blocks back to the
  system soon after they are freed, so the next chunk or call faulted them
  in afresh, and glibc unmaps whatever lies above its 2 GiB trim threshold
  (bench/RESULTS.md, "barrier_grid" and "Memory a chunk reuses").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import mmap
import sys
import threading
import weakref
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


# Blocks at least this large are kept for reuse once keep_freed_memory()
# is applied: a 1M-row chunk's columns (1-8 MiB) included.  In a job,
# mimalloc held them in huge pages that it handed back between one chunk
# and the next and faulted in afresh (its arena's AnonHugePages rose and
# fell between 14 and 233 MB), and on this VM that made a job's label math
# and candle copies cost three to seven times their CPU (bench/RESULTS.md,
# "Memory a chunk reuses").  Smaller ones come and go through the pool.
REUSE_MIN_BYTES = 1 << 20
# A kept block serves a request of at least this fraction of its size.
_REUSE_FIT = 0.75


class _Blocks:
    """Anonymous mappings handed out as arrays and, once every array and
    Arrow buffer over one is gone, kept to be handed out again.  The blocks
    kept total no more than the most ever in use at once, so RSS stays at
    about its high-water mark, as glibc's heap does under keep_freed_memory."""

    def __init__(self) -> None:
        # Reentrant: a finalizer may give a block back from a collection
        # that runs while this thread holds the lock.
        self._lock = threading.RLock()
        self._free: list[mmap.mmap] = []
        self._free_bytes = 0
        self._live = 0
        self._peak = 0

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of at least ``nbytes`` over a kept or a new block."""
        with self._lock:
            fits = [m for m in self._free if _REUSE_FIT * len(m) <= nbytes <= len(m)]
            block = min(fits, key=len) if fits else None
            if block is not None:
                self._free.remove(block)
                self._free_bytes -= len(block)
        if block is None:
            block = mmap.mmap(-1, nbytes)
        with self._lock:
            self._live += len(block)
            self._peak = max(self._peak, self._live)
        holder = np.frombuffer(block, np.uint8)
        weakref.finalize(holder, self._give_back, block)
        return holder

    def _give_back(self, block: mmap.mmap) -> None:
        with self._lock:
            self._live -= len(block)
            self._free.append(block)
            self._free_bytes += len(block)
            while self._free_bytes > self._peak - self._live:
                dropped = self._free.pop(0)  # the longest kept
                self._free_bytes -= len(dropped)

    def kept_bytes(self) -> int:
        with self._lock:
            return self._free_bytes


_blocks = _Blocks()


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
    (``pa.py_buffer``) holds the array.  Blocks of ``REUSE_MIN_BYTES`` or
    more come from the kept blocks once ``keep_freed_memory`` is applied."""
    dtype = np.dtype(dtype)
    nbytes = math.prod((shape,) if isinstance(shape, (int, np.integer)) else shape) * dtype.itemsize
    if _applied and nbytes >= REUSE_MIN_BYTES:
        return _blocks.take(nbytes)[:nbytes].view(dtype).reshape(shape)
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
