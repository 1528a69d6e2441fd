"""``Store.window_prints``'s interval lookup, against a numpy reference,
over real chDB: each window's count and row-hash sum must be exactly those
of the rows with lo <= ts < hi, for any layout of bounds: a millisecond
apart, on a row, at ``EVER``'s ends, few (a linear scan in ClickHouse) or
thousands (a binary search), over a series with gaps and clusters."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from gpubackfill.jobs.spec import EVER
from gpubackfill.sources import fingerprint
from gpubackfill.storage.clickhouse_store import SeriesKey

KEY = SeriesKey("EURUSD", "M1", "ms")
MAPS = ["instrument=symbol", "ts=time", "open=o", "high=h", "low=l", "close=c", "volume=v"]


def layout(rng: np.random.Generator) -> np.ndarray:
    """Sorted distinct ms: runs a millisecond apart, minutes apart, gaps of
    years, and a candle at each end of time a DateTime64 holds."""
    ts = np.concatenate([
        1_700_000_000_000 + np.arange(400),                     # 1 ms apart
        1_700_100_000_000 + np.arange(1500) * 60_000,           # M1
        1_800_000_000_000 + np.cumsum(rng.integers(1, 10**9, 300)),  # gaps
        [EVER[0], EVER[0] + 1, EVER[1] - 1, 0, -1, 1],
    ])
    return np.unique(ts.astype(np.int64))


def source(service) -> tuple[np.ndarray, np.ndarray]:
    """A source whose ts has millisecond precision: (its ts, row hashes)."""
    service.init()
    rng = np.random.default_rng(7)
    ts = layout(rng)
    values = {c: rng.normal(100, 5, len(ts)) for c in fingerprint.COLUMNS}
    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.ticks (symbol String, time DateTime64(3, 'UTC'),
            o Float64, h Float64, l Float64, c Float64, v Float64) ENGINE = MergeTree ORDER BY (symbol, time)""")
    rows = pa.table({"symbol": ["EURUSD"] * len(ts), "time": pa.array(ts, pa.timestamp("ms", tz="UTC")),
                     **{k: values[c] for k, c in zip("ohlcv", fingerprint.COLUMNS)}})
    perm = rng.permutation(len(ts))
    for part in np.array_split(perm, 3):  # several parts, in no order
        service.store.client.insert_arrow(f"{db}.ticks", rows.take(pa.array(part)))
    service.sources.add("ms", f"{db}.ticks", MAPS, granularity="M1")
    return ts, fingerprint.row_hashes(ts, values)


def reference(ts: np.ndarray, hashes: np.ndarray, windows) -> list[str]:
    out = []
    for lo, hi in windows:
        inside = (ts >= lo) & (ts < hi)
        out.append(fingerprint.stamp(int(inside.sum()), fingerprint.total(hashes[inside])))
    return out


def test_window_prints_equal_numpy_for_any_bounds(service):
    ts, hashes = source(service)
    near = np.concatenate([ts, ts - 1, ts + 1, [EVER[0], EVER[1]]])
    anywhere = st.integers(EVER[0], EVER[1])
    bound = st.one_of(st.sampled_from(near.tolist()), anywhere)

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(bound, bound).filter(lambda w: w[0] != w[1]), min_size=1, max_size=40))
    def check(pairs):
        windows = [(min(a, b), max(a, b)) for a, b in pairs]
        assert service.store.window_prints(KEY, windows) == reference(ts, hashes, windows)

    check()


def test_thousands_of_bounds_a_millisecond_apart_and_at_every_row(service):
    """A print per row (chunks of one candle) and windows nested across the
    clusters: thousands of bounds, many one millisecond apart."""
    ts, hashes = source(service)
    windows = [(int(a), int(a) + 1) for a in ts]                         # one row each
    windows += [(int(a), int(b)) for a, b in zip(ts[:-50:7], ts[50::7])]  # overlapping
    windows += [(EVER[0], int(ts[len(ts) // 2])), (int(ts[-3]), EVER[1]), (EVER[0], EVER[1])]
    got = service.store.window_prints(KEY, windows)
    assert got == reference(ts, hashes, windows)
    assert got[-1] == fingerprint.stamp(len(ts), fingerprint.total(hashes))
    # An empty window, between two rows a minute apart, and one before every row.
    gap = int(ts[500]) + 1, int(ts[501])
    assert service.store.window_prints(KEY, [gap, (EVER[0], int(ts[0]))]) == ["0:0", "0:0"]
