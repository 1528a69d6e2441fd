"""Where label columns' memory comes from: Arrow's pool instead of np.empty.

The pooled path must give the very same tables as plain numpy allocation,
and a returned table must own its memory: the pool reuses freed buffers, so
a table whose buffers were returned too early would show the next call's
values.  Speed is measured in bench/kernels.py, not here.
"""

from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import random_walk
from strategies import finer_candles

from gpubackfill import labels as registry
from gpubackfill.candles.frames import to_series, validate
from gpubackfill.compute import allocator, compute_series
from kernels import cpu

TB = "enhanced_triple_barrier"

# Every label and every allocating kernel: the default set, the second set,
# sample weights (column-sized scratch), rolling sigma, resolve_with (the
# replay writes into pooled outputs in place).
REQUESTS = [
    (list(registry.DEFAULT_LABELS), None),
    (["fixed_horizon", "trend_scanning"], {"fixed_horizon": {"threshold": 0.5}}),
    ([TB, "vol_scaled_return"], {TB: {"weights": True, "vol": "rolling", "vol_span": 20,
                                      "horizon": 40, "resolve_with": "M1"},
                                 "vol_scaled_return": {"horizons": [1, 7, 90], "vol": "rolling",
                                                       "vol_span": 20}}),
]


def _series(n: int, seed: int):
    c = random_walk(n, seed=seed, vol=3e-3)
    finer = finer_candles({k: v[:2_000] for k, v in c.items()}, seed)
    series = validate(to_series(pd.DataFrame(c)))
    return replace(series, finer=validate(to_series(pd.DataFrame(finer))))


def _compute(series, labels, params, **kw) -> pa.Table:
    return compute_series(series, registry.resolve(labels, params), cpu, **kw)


def assert_same(got: pa.Table, want: pa.Table) -> None:
    """Same columns, same validity and the same values where valid (NaN
    equal to NaN)."""
    assert got.schema == want.schema
    for name in want.column_names:
        g, w = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        assert g.null_count == w.null_count, name
        np.testing.assert_array_equal(g.is_null().to_numpy(zero_copy_only=False),
                                      w.is_null().to_numpy(zero_copy_only=False), err_msg=name)
        valid = ~w.is_null().to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(g.to_numpy(zero_copy_only=False)[valid],
                                      w.to_numpy(zero_copy_only=False)[valid], err_msg=name)


needs_pool = pytest.mark.skipif(allocator.output_pool() is None,
                                reason="pyarrow was built without mimalloc")


@pytest.mark.parametrize("labels,params", REQUESTS)
def test_pooled_outputs_equal_plain_numpy_allocation(labels, params):
    series = _series(6_000, seed=3)
    assert_same(_compute(series, labels, params), _compute(series, labels, params, empty=np.empty))


@needs_pool
def test_columns_live_in_the_pool_until_the_table_is_dropped():
    pool = allocator.output_pool()
    series = _series(20_000, seed=4)
    gc.collect()
    before = pool.bytes_allocated()
    table = _compute(series, *REQUESTS[0])
    # Every label's values (validity bitmaps are shared between columns);
    # ts is a view of the input, which is numpy here.
    values = sum(table.column(name).chunk(0).buffers()[1].size
                 for name in table.column_names if name != "ts")
    assert pool.bytes_allocated() - before >= values
    del table
    gc.collect()
    assert pool.bytes_allocated() == before


@pytest.mark.parametrize("labels,params", REQUESTS)
def test_a_table_keeps_its_memory_while_later_calls_reuse_the_pool(labels, params):
    a, b = _series(6_000, seed=5), _series(6_000, seed=6)
    first = _compute(a, labels, params)
    column = first.column(first.column_names[-1])  # outlives its table
    sliced = first.slice(100, 1_000)                # what the engine keeps of a chunk
    want = _compute(a, labels, params, empty=np.empty)
    del first
    gc.collect()
    for _ in range(3):  # same sizes, so the freed buffers are the ones handed out again
        _compute(b, labels, params)
        gc.collect()
    assert column.equals(want.column(want.column_names[-1]))
    assert_same(sliced, want.slice(100, 1_000))
    # and the later calls' own results are right too
    assert_same(_compute(b, labels, params), _compute(b, labels, params, empty=np.empty))


def test_pooled_arrays_are_what_numba_already_compiled_for():
    """Writable, aligned, C-contiguous like np.empty's: no second
    specialisation of any kernel (a read-only output would not even compile)."""
    series = _series(3_000, seed=8)
    _compute(series, *REQUESTS[0], empty=np.empty)
    kernels = (cpu._triple_barrier, cpu._vol_scaled_return, cpu._mfe_mae, cpu._log_returns,
               cpu._bitmap_not_nan, cpu._bitmap_flags_clear, cpu._bitmap_prefix)
    compiled = [len(k.signatures) for k in kernels]
    _compute(series, *REQUESTS[0])
    assert [len(k.signatures) for k in kernels] == compiled
    out = allocator.empty((3, 5), np.int32)
    assert out.shape == (3, 5) and out.dtype == np.int32
    assert out.flags.writeable and out.flags.c_contiguous and out.ctypes.data % 64 == 0
    assert allocator.empty(0, np.float64).shape == (0,)


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_large_blocks_are_handed_out_again_without_faulting_them_in():
    """Under keep_freed_memory(), a freed block of REUSE_MIN_BYTES or more
    serves the next request of its size from pages already in place, even
    after smaller blocks were taken meanwhile (Arrow's pool carves those out
    of the freed block, so the next large one came from fresh pages)."""
    assert allocator.keep_freed_memory()
    count = 2 * allocator.REUSE_MIN_BYTES // 8
    first = allocator.empty(count, np.float64)
    first.fill(1.0)
    address = first.ctypes.data
    del first
    gc.collect()
    smaller = [allocator.empty((8 << 20) // 8, np.float64) for _ in range(12)]
    for s in smaller:
        s.fill(3.0)
    before = _minor_faults()
    again = allocator.empty(count, np.float64)
    again.fill(2.0)
    assert _minor_faults() - before == 0
    assert again.ctypes.data == address


def test_a_large_block_in_use_is_never_handed_out_twice():
    assert allocator.keep_freed_memory()
    count = allocator.REUSE_MIN_BYTES // 8
    held = allocator.empty(count, np.float64)
    held.fill(1.0)
    column = pa.Array.from_buffers(pa.float64(), count, [None, pa.py_buffer(held)])
    del held
    gc.collect()  # the Arrow array alone keeps the block
    other = allocator.empty(count, np.float64)
    other.fill(2.0)
    assert column.to_numpy()[[0, -1]].tolist() == [1.0, 1.0]
    assert other.flags.writeable and other.flags.c_contiguous and other.ctypes.data % 64 == 0
    kept_before = allocator._blocks.kept_bytes()
    del column, other
    gc.collect()
    # Both blocks were in use at once, so both may be kept, and no more.
    assert allocator._blocks.kept_bytes() - kept_before <= 2 * count * 8


def test_a_chunks_candles_in_many_batches_are_joined_into_memory_handed_out_again():
    """A chDB result comes in blocks of ~18k rows: ``to_series`` joins each
    column once, into the kernels' allocator, so a later chunk's join reuses
    the pages an earlier one freed, however long ago (Arrow's pool had
    handed them back after half a second, and they were faulted in afresh),
    and the values are those of the one-batch table."""
    import time

    assert allocator.keep_freed_memory()
    n = 600_000  # 4.8 MB a column: above REUSE_MIN_BYTES, so kept for reuse
    table = pa.table(random_walk(n, seed=21))
    batched = pa.Table.from_batches(table.to_batches(max_chunksize=18_000))
    assert batched.column("close").num_chunks > 30
    want = to_series(table)
    first = to_series(batched)
    for name in ("ts", "open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(first, name), getattr(want, name))
    assert not first.close.flags.writeable and first.close.flags.c_contiguous
    del first
    gc.collect()
    faults = 0
    for _ in range(3):  # the time between one chunk's read and the next's
        time.sleep(0.5)
        churn = [pa.allocate_buffer(1 << 16, memory_pool=allocator.output_pool()) for _ in range(50)]
        del churn
        before = _minor_faults()
        again = to_series(batched)
        faults += _minor_faults() - before
        np.testing.assert_array_equal(again.close, want.close)
        del again
        gc.collect()
    # Fresh pages would be ~5,900 faults a join (5 columns of 4.8 MB).
    assert faults < 50
