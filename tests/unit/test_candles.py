"""Candle frames into the arrays the kernels read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import random_walk

from gpubackfill.candles.frames import defect_codes, to_series, validate
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


# One bad value of each kind the validator knows, written into a copy of a
# valid series at row i.
_DEFECTS = {
    "nan close": lambda c, i: c["close"].__setitem__(i, np.nan),
    "inf high": lambda c, i: c["high"].__setitem__(i, np.inf),
    "zero low": lambda c, i: c["low"].__setitem__(i, 0.0),
    "negative open": lambda c, i: c["open"].__setitem__(i, -c["open"][i]),
    # Each breaks exactly one of the four orderings of high and low.
    "open above high": lambda c, i: c["open"].__setitem__(i, c["high"][i] * 1.001),
    "close above high": lambda c, i: c["close"].__setitem__(i, c["high"][i] * 1.001),
    "open below low": lambda c, i: c["open"].__setitem__(i, c["low"][i] * 0.999),
    "close below low": lambda c, i: c["close"].__setitem__(i, c["low"][i] * 0.999),
    "duplicate ts": lambda c, i: c["ts"].__setitem__(i, c["ts"][i - 1]),
    "ts back": lambda c, i: c["ts"].__setitem__(i, c["ts"][i] - 3 * 60_000),
    "negative volume": lambda c, i: c["volume"].__setitem__(i, -1.0),
    "nan volume": lambda c, i: c["volume"].__setitem__(i, np.nan),
    "inf volume": lambda c, i: c["volume"].__setitem__(i, np.inf),
}


@pytest.mark.parametrize("kind", sorted(_DEFECTS))
def test_the_first_defect_is_found_in_any_block_at_any_row(kind):
    """``first_defect`` proves a block clean in one branch-free pass and
    searches only the others row by row: whatever the row (block edges
    included), it names the same row as the per-row codes."""
    n = 3 * cpu.ROW_BLOCK + 123
    rows = [0, 1, cpu.ROW_BLOCK - 1, cpu.ROW_BLOCK, 2 * cpu.ROW_BLOCK + 7, n - 1]
    rows += list(np.random.default_rng(len(kind)).integers(0, n, 6))
    for i in rows:
        if "ts" in kind and i == 0:
            continue  # row 0 has no earlier row to be out of order with
        c = random_walk(n, seed=int(i))
        _DEFECTS[kind](c, int(i))
        s = to_series(pd.DataFrame(c))
        first = int(np.flatnonzero(defect_codes(s))[0])
        assert first == i, (kind, i, first)
        with_volume = cpu.first_defect(s.ts, s.open, s.high, s.low, s.close, s.volume, True)
        assert with_volume == first, (kind, i)
        without = cpu.first_defect(s.ts, s.open, s.high, s.low, s.close, s.volume, False)
        assert without == (-1 if "volume" in kind else first), (kind, i)


def test_a_clean_series_has_no_first_defect():
    for n in (1, 7, cpu.ROW_BLOCK, cpu.ROW_BLOCK + 1):
        s = to_series(pd.DataFrame(random_walk(n, seed=n)))
        assert cpu.first_defect(s.ts, s.open, s.high, s.low, s.close, s.volume, True) == -1
    empty = np.empty(0)
    assert cpu.first_defect(np.empty(0, np.int64), empty, empty, empty, empty, empty, True) == -1
