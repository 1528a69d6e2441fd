"""Process-wide memory policy for long-running label computation.

glibc serves every block over a few MiB with its own ``mmap`` and unmaps it
on ``free``.  A chunk of candles allocates and frees hundreds of MiB of
label columns, so every chunk would fault all of that memory in afresh;
on virtual machines that costs more than the label arithmetic itself
(measured in bench/RESULTS.md).  Keeping freed memory in the heap for reuse
removes the cost; the price is that RSS stays at its high-water mark.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
