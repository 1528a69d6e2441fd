"""Copies between host arrays and the device through pinned staging buffers.

A copy from pageable memory makes the driver stage it through its own small
pinned buffer, synchronously: on the H200 the copies of ``compute_labels``
ran far below the bus (bench/RESULTS.md, issue 29).  A ``Staging`` keeps a
few pinned buffers and one stream for each, and moves an array in pieces of
``piece_bytes``: while one buffer's piece crosses the bus asynchronously,
the host fills (or empties) the other, so the host's copies and the DMA
overlap.  The buffers are kept for the next array and the next call.

Next to ``kernels.cuda``, the only module that imports ``numba.cuda``; like
it, importing this module does not initialise CUDA.  Under numba's CUDA
simulator pinned arrays and streams exist but nothing is asynchronous: the
pieces and their order are the same, which is what the simulator tests.
"""

from __future__ import annotations

import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import cuda

# Bytes a piece: large enough that a copy's fixed cost (~10 us) is small
# against its time on the bus, small enough that two buffers a thread stay cheap.
PIECE_BYTES = 32 << 20
# Pinned buffers (and streams) a Staging cycles through.
DEPTH = 2
# A piece's host copy is split among this many threads once it is at least
# COPY_SPLIT_BYTES: one core copies ~5-10 GB/s, below a PCIe 5 x16 bus.
COPY_THREADS = 4
COPY_SPLIT_BYTES = 4 << 20

_pool_lock = threading.Lock()
_pool: list[ThreadPoolExecutor] = []


def _copier() -> ThreadPoolExecutor:
    with _pool_lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="staging-copy"))
        return _pool[0]


def _host_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[:] = src, split among threads when large (np.copyto releases the GIL)."""
    n = dst.shape[0]
    if COPY_THREADS <= 1 or dst.nbytes < COPY_SPLIT_BYTES:
        np.copyto(dst, src)
        return
    step = -(-n // COPY_THREADS)
    parts = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    list(_copier().map(lambda p: np.copyto(dst[p[0]:p[1]], src[p[0]:p[1]]), parts))


def _numba_array(x):
    """A numba device array over ``x`` (CuPy and cuDF arrays: a view)."""
    return x if hasattr(x, "copy_to_host") else cuda.as_cuda_array(x)


def _flat_device(x):
    """A 1-d numba device view of a C-contiguous device array, or None."""
    x = _numba_array(x)
    if not x.is_c_contiguous():
        return None
    size = int(np.prod(x.shape))
    return x.reshape(size) if len(x.shape) != 1 else x


class Staging:
    """Pinned buffers and streams for piecewise copies; one per thread
    (``for_thread``): a Staging is not safe to share between threads."""

    def __init__(self, piece_bytes: int = PIECE_BYTES, depth: int = DEPTH) -> None:
        # A whole number of float64s, so that any dtype's piece fills it exactly.
        self.piece_bytes = max(8, piece_bytes - piece_bytes % 8)
        self._buffers = [cuda.pinned_array(self.piece_bytes, np.uint8) for _ in range(depth)]
        self._streams = [cuda.stream() for _ in range(depth)]
        self.pieces = 0  # pieces moved so far (the tests count them)

    def _pieces(self, n: int, itemsize: int) -> list[tuple[int, int]]:
        per = max(1, self.piece_bytes // itemsize)
        return [(lo, min(n, lo + per)) for lo in range(0, n, per)]

    def _buffer(self, slot: int, rows: int, dtype: np.dtype) -> np.ndarray:
        return self._buffers[slot][: rows * dtype.itemsize].view(dtype)

    def to_device(self, host: np.ndarray, out=None):
        """``host`` copied to a new device array (or into ``out``, same
        shape and dtype), piece by piece; returns it once on the device."""
        host = np.ascontiguousarray(host)
        dev = cuda.device_array(host.shape, host.dtype) if out is None else out
        flat = _flat_device(dev)
        src = host.reshape(-1)
        if flat is None:
            raise ValueError("to_device needs a C-contiguous device array")
        depth = len(self._buffers)
        for k, (lo, hi) in enumerate(self._pieces(src.shape[0], host.dtype.itemsize)):
            slot = k % depth
            stream = self._streams[slot]
            stream.synchronize()  # this buffer's last piece has left it
            buf = self._buffer(slot, hi - lo, host.dtype)
            _host_copy(buf, src[lo:hi])
            flat[lo:hi].copy_to_device(buf, stream=stream)
            self.pieces += 1
        self.synchronize()
        return dev

    def to_host(self, dev, out: np.ndarray | None = None) -> np.ndarray:
        """A device array copied into ``out`` (a C-contiguous host array of
        its shape and dtype; default a new one), piece by piece."""
        shape = tuple(int(s) for s in dev.shape)
        dtype = np.dtype(dev.dtype)
        host = np.empty(shape, dtype) if out is None else out
        if host.shape != shape or host.dtype != dtype or not host.flags.c_contiguous:
            raise ValueError(f"to_host needs a C-contiguous {dtype} array of shape {shape}")
        flat = _flat_device(dev)
        if flat is None:  # a strided view: one plain copy
            np.copyto(host, _numba_array(dev).copy_to_host())
            return host
        dst = host.reshape(-1)
        # The kernels that wrote ``dev`` ran on the default stream: the
        # staging streams wait for them (implicit with the legacy default
        # stream, not with a per-thread one).
        ready = cuda.event()
        ready.record(cuda.default_stream())
        for stream in self._streams:
            ready.wait(stream)
        depth = len(self._buffers)
        waiting: list[tuple[int, int, np.ndarray] | None] = [None] * depth

        def drain(slot: int) -> None:
            job = waiting[slot]
            if job is not None:
                self._streams[slot].synchronize()
                _host_copy(dst[job[0]:job[1]], job[2])
                waiting[slot] = None

        pieces = self._pieces(dst.shape[0], dtype.itemsize)
        for k, (lo, hi) in enumerate(pieces):
            slot = k % depth
            drain(slot)  # piece k - depth; piece k - 1 is still on the bus
            buf = self._buffer(slot, hi - lo, dtype)
            flat[lo:hi].copy_to_host(buf, stream=self._streams[slot])
            waiting[slot] = (lo, hi, buf)
            self.pieces += 1
        for k in range(len(pieces), len(pieces) + depth):
            drain(k % depth)
        return host

    def synchronize(self) -> None:
        for s in self._streams:
            s.synchronize()


_local = threading.local()


def for_thread(piece_bytes: int = PIECE_BYTES) -> Staging:
    """This thread's Staging with pieces of ``piece_bytes``, kept for its
    next call (pinned memory is slow to allocate)."""
    stagings = getattr(_local, "stagings", None)
    if stagings is None:
        stagings = _local.stagings = {}
    got = stagings.get(piece_bytes)
    if got is None:
        got = stagings[piece_bytes] = Staging(piece_bytes)
    return got


def free_bytes() -> int:
    """Device memory free now, as the current context's memory manager
    counts it (with an RMM pool as numba's allocator: RMM's answer).  The
    simulator answers infinity: no bound."""
    free, _total = cuda.current_context().get_memory_info()
    return int(free) if math.isfinite(free) else sys.maxsize
