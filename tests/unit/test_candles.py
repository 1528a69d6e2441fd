"""Candle frames into the arrays the kernels read."""

from __future__ import annotations

import pyarrow as pa

from gpubackfill.candles.frames import to_series, validate
from gpubackfill.candles.synthetic import generate
from gpubackfill.compute import compute_labels
from kernels import cpu


def test_kernels_see_one_kind_of_array_whatever_the_source():
    """numba compiles one specialisation per array mutability: read-only
    (Arrow, one batch, zero-copy) and writable (several batches, pandas)
    inputs once compiled every label twice, the first job after a warm-up
    paying for the second set."""
    one = generate("EURUSD", "M1", "2024-01-01", "2024-01-04")
    sources = [one, pa.Table.from_batches(one.to_batches(max_chunksize=700)), one.to_pandas()]
    for source in sources:
        for s in (to_series(source), validate(to_series(source), "drop")):
            assert not any(a.flags.writeable for a in (s.ts, s.open, s.high, s.low, s.close, s.volume))
    compute_labels(sources[0], ["vol_scaled_return"])
    compiled = len(cpu._log_returns.signatures)
    for source in sources[1:]:
        compute_labels(source, ["vol_scaled_return"])
    assert len(cpu._log_returns.signatures) == compiled
