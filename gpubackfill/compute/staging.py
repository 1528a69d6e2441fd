"""Labels on a device: the candles in and the labels out through pinned
staging buffers (``kernels.cuda_transfer``), in row blocks that keep the
device's memory bounded.

A series whose columns, outputs and scratch fit ``budget`` bytes of device
memory is computed in one block.  A longer one is cut as the engine cuts
chunks: each block is its own rows plus the look-back and look-ahead halo
the labels declare (``labels.halo``), computed as a series of its own, and
only its own rows are kept.  The label contract makes that give the rows of
the whole series (integers equal, floats within 1e-9 relative, barrier
ties aside: docs/labels.md, "Chunking and halos"); the rolling sigma and
every label without sigma are exactly chunk-invariant.

Each block's outputs come back into host arrays from ``empty`` (the pooled
allocator), which the Arrow table then wraps; a block's table is sliced to
its own rows and the blocks' tables are concatenated, without copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from ..labels import ResolvedLabel, Series, halo
from ..labels.volatility import sigma_key

# Device memory a call may use (bytes); None: DEVICE_SHARE of what is free
# when the call starts.  compute_series' device_budget overrides it.
DEVICE_BUDGET: int | None = None
DEVICE_SHARE = 0.5
# Staging piece (bytes); compute_series' piece_bytes overrides it.
PIECE_BYTES: int | None = None  # None: kernels.cuda_transfer.PIECE_BYTES
# Device scratch a row may need besides its inputs and outputs: sigma's
# scans (three float64 columns), the triple barrier's block tables, the
# MFE/MAE runs beyond the direct horizon (eight 8-byte columns).
SCRATCH_BYTES_PER_ROW = 96

_INPUTS = ("open", "high", "low", "close", "side")


def device_bytes_per_row(series: Series, resolved: list[ResolvedLabel]) -> int:
    """Device bytes a row of ``series`` takes while ``resolved`` are
    computed: its input columns, every output column (a list column as its
    elements), one float64 sigma per distinct estimator, and scratch."""
    inputs = sum(np.dtype(getattr(series, k).dtype).itemsize for k in _INPUTS
                 if getattr(series, k) is not None)
    outputs = 0
    for r in resolved:
        for _name, arrow_type in r.outputs():
            outputs += _row_bytes(arrow_type, r)
    sigmas = len({sigma_key(r.params) for r in resolved if r.spec.uses_sigma})
    return inputs + outputs + 8 * sigmas + SCRATCH_BYTES_PER_ROW


def _row_bytes(arrow_type: pa.DataType, r: ResolvedLabel) -> int:
    if pa.types.is_list(arrow_type):
        p = r.params
        width = len(p.get("pts", ())) * len(p.get("sls", ())) * len(p.get("horizons", ())) or 1
        return width * _row_bytes(arrow_type.value_type, r)
    return max(1, arrow_type.bit_width // 8)


def row_blocks(n: int, rows: int, back: int, ahead: int) -> list[tuple[int, int, int, int]]:
    """Blocks of at most ``rows`` rows covering ``0..n``: (lo, a, b, hi),
    own rows a..b, computed over lo..hi with the halo.  A block's own rows
    are never fewer than its halo, so a budget too small for that is
    exceeded rather than the series cut into slivers."""
    if n <= rows:
        return [(0, 0, n, n)]
    own = max(rows - back - ahead, back + ahead, 1)
    out = []
    for a in range(0, n, own):
        b = min(n, a + own)
        out.append((max(0, a - back), a, b, min(n, b + ahead)))
    return out


class StagedKernels:
    """The CUDA kernels, with ``to_host`` and the host-side bitmaps going
    through a ``Staging``.  A device array brought to the host is kept
    until the next kernel call (which may write it in place: the triple
    barrier's finer-candle pass does), so the bitmap of a column and the
    column itself cross the bus once."""

    ON_DEVICE = True
    _KEEP = frozenset({"to_host", "bitmap_not_nan", "bitmap_flags_clear", "bitmap_prefix"})

    def __init__(self, kernels: Any, staging: Any, empty: Callable[..., np.ndarray]) -> None:
        self._kernels = kernels
        self._staging = staging
        self._empty = empty
        self._host: dict[int, tuple[Any, np.ndarray]] = {}

    def __getattr__(self, name: str) -> Any:
        self._host.clear()
        return getattr(self._kernels, name)

    def to_host(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        got = self._host.get(id(x))
        if got is not None and got[0] is x:
            return got[1]
        shape = tuple(int(s) for s in x.shape)
        host = self._staging.to_host(x, self._empty(shape, np.dtype(x.dtype)))
        self._host[id(x)] = (x, host)
        return host

    def bitmap_not_nan(self, x: Any) -> np.ndarray:
        from kernels import cpu

        return cpu.bitmap_not_nan(self.to_host(x), empty=self._empty)

    def bitmap_flags_clear(self, flags: Any, bits: int) -> np.ndarray:
        from kernels import cpu

        return cpu.bitmap_flags_clear(self.to_host(flags), bits, empty=self._empty)

    def bitmap_prefix(self, n: int, count: int) -> np.ndarray:
        from kernels import cpu

        return cpu.bitmap_prefix(n, count, empty=self._empty)


def compute(series: Series, resolved: list[ResolvedLabel], kernels: Any,
            table_of: Callable[[Series, list[ResolvedLabel], Any], pa.Table], *,
            empty: Callable[..., np.ndarray], budget: int | None = None,
            piece_bytes: int | None = None) -> pa.Table:
    """``table_of(series on the device, resolved, kernels)`` over row
    blocks that fit ``budget`` device bytes, as one table of every row."""
    from kernels import cuda_transfer

    n = len(series)
    if budget is None:
        budget = DEVICE_BUDGET
    if budget is None:
        budget = int(DEVICE_SHARE * cuda_transfer.free_bytes())
    rows = max(1, budget // device_bytes_per_row(series, resolved))
    back, ahead = halo(resolved)
    blocks = row_blocks(n, rows, back, ahead)
    if len(blocks) > 1 and series.finer is not None and series.bar_ms is None:
        from ..labels.triple_barrier import bar_length

        # The bar length comes from the whole series, not from a block's steps.
        series = replace(series, bar_ms=bar_length(series.ts))
    piece = piece_bytes or PIECE_BYTES or cuda_transfer.PIECE_BYTES
    staging = cuda_transfer.for_thread(piece)
    parts = []
    for lo, a, b, hi in blocks:
        part = series if (lo, hi) == (0, n) else replace(
            series.rows(lo, hi), finer=series.finer, bar_ms=series.bar_ms)
        on_device = {k: staging.to_device(getattr(part, k)) for k in _INPUTS
                     if getattr(part, k) is not None}
        part = Series(ts=part.ts, open=on_device.get("open"), high=on_device.get("high"),
                      low=on_device.get("low"), close=on_device["close"], volume=None,
                      finer=part.finer, bar_ms=part.bar_ms, side=on_device.get("side"))
        table = table_of(part, resolved, StagedKernels(kernels, staging, empty))
        parts.append(table if (lo, hi) == (a, b) else table.slice(a - lo, b - a))
        del on_device, part, table
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)
