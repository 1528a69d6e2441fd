"""The second label set through the engine (real chDB and Redis): an H1 job
that resolves ambiguous bars from M1 candles loads only the M1 candles of
those bars, counts them in ``status``, and stores what ``compute_labels``
gives on the whole series; a missing finer series is said once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from compare import assert_exact, assert_float_close, column

from gpubackfill import compute_labels
from gpubackfill.candles.synthetic import generate
from gpubackfill.storage.clickhouse_store import SeriesKey, Store

pytestmark = pytest.mark.integration

TB = "enhanced_triple_barrier"
H1 = 3_600_000
D1 = 86_400_000


def m1_and_h1(start="2024-01-01", end="2024-02-10") -> tuple[pa.Table, pa.Table]:
    """M1 candles and the H1 candles they make (so the two agree)."""
    m1 = generate("EURUSD", "M1", start, end)
    df = m1.to_pandas()
    df["bar"] = df["ts"] // H1 * H1
    h1 = df.groupby("bar").agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                               close=("close", "last"), volume=("volume", "sum")).reset_index()
    h1 = h1.rename(columns={"bar": "ts"})
    return m1, pa.Table.from_pandas(h1[["ts", "open", "high", "low", "close", "volume"]],
                                    preserve_index=False)


def test_an_h1_job_resolves_from_m1_loading_only_ambiguous_bars(service, monkeypatch):
    m1, h1 = m1_and_h1()
    service.ingest_table(SeriesKey("EURUSD", "M1"), m1)
    service.ingest_table(SeriesKey("EURUSD", "H1"), h1)
    asked: list[int] = []
    real = Store.load_bars

    def counting(self, key, starts, bar_ms, *cols):
        asked.append(len(np.unique(starts)))
        return real(self, key, starts, bar_ms, *cols)

    monkeypatch.setattr(Store, "load_bars", counting)
    params = {TB: {"resolve_with": "M1", "weights": True, "vol_span": 20}}
    job = service.create_job("EURUSD", "H1", "2024-01-01", "2024-02-01", labels=[TB],
                             params=params, chunk_size=97, workers=2)
    assert service.execute(job).status == "completed"
    s = service.job(job).model_dump()
    stored = service.export("EURUSD", "H1", [TB], params)
    whole = compute_labels(h1, TB, params, finer=m1, output="arrow")
    ts = whole.column("ts").to_numpy()
    at = np.searchsorted(ts, stored.column("ts").to_numpy())
    want = whole.take(pa.array(at))
    for name in ("tb_label", "tb_barrier", "tb_exit_bars", "tb_flags"):
        assert_exact(name, column(stored, name), column(want, name))
    for name in ("tb_exit_return", "tb_uniqueness", "tb_attribution"):
        assert_float_close(name, column(stored, name), column(want, name))
    flags = column(stored, "tb_flags")
    assert s["bars_resolved"] == np.count_nonzero(flags & 16) > 0
    assert s["bars_ambiguous"] == np.count_nonzero(flags & 2)
    # Only the bars that were ambiguous were read from M1, not the whole month.
    assert 0 < sum(asked) < 0.5 * s["candles_total"]


def test_a_d1_job_resolves_across_a_daylight_saving_shift(service, monkeypatch):
    """D1 bars that open at 22:00 UTC in winter and 21:00 in summer: two
    phases, and the bar before the shift overlaps the next one by an hour
    (its finer window is one D1 length).  Chunks cut the series; what is
    stored equals compute_labels on the whole series with the same bar."""
    h1 = generate("EURUSD", "H1", "2024-02-01", "2024-05-01")
    ts = h1.column("ts").to_numpy()
    # New York's clocks go forward on 2024-03-10: from 21:00 UTC that day,
    # sessions open at 21:00 UTC instead of 22:00 (the day before is 23 hours).
    shift = 1_710_104_400_000
    session = np.where(ts < shift, 22, 21) * H1  # the day's start, in ms after 00:00 UTC
    day = (ts - session) // D1 * D1 + session
    df = h1.to_pandas().assign(day=day)
    d1 = df.groupby("day").agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                               close=("close", "last"), volume=("volume", "sum")).reset_index()
    d1 = pa.Table.from_pandas(d1.rename(columns={"day": "ts"})[["ts", "open", "high", "low", "close",
                                                                  "volume"]], preserve_index=False)
    assert len(np.unique(d1.column("ts").to_numpy() % D1)) == 2
    service.ingest_table(SeriesKey("EURUSD", "H1"), h1)
    service.ingest_table(SeriesKey("EURUSD", "D1"), d1)
    phases: set[int] = set()
    real = Store.load_bars

    def seen(self, key, starts, bar_ms, *cols):
        phases.update(int(x) for x in np.asarray(starts) % bar_ms)
        return real(self, key, starts, bar_ms, *cols)

    monkeypatch.setattr(Store, "load_bars", seen)
    params = {TB: {"resolve_with": "H1", "horizon": 5, "pt": 0.5, "sl": 0.5, "vol_span": 5}}
    job = service.create_job("EURUSD", "D1", "2024-02-01", "2024-05-01", labels=[TB],
                             params=params, chunk_size=13, workers=2)
    assert service.execute(job).status == "completed"
    stored = service.export("EURUSD", "D1", [TB], params)
    whole = compute_labels(d1, TB, params, finer=h1, bar_ms=D1, output="arrow")
    at = np.searchsorted(whole.column("ts").to_numpy(), stored.column("ts").to_numpy())
    want = whole.take(pa.array(at))
    for name in ("tb_label", "tb_barrier", "tb_exit_bars", "tb_flags"):
        assert_exact(name, column(stored, name), column(want, name))
    assert_float_close("tb_exit_return", column(stored, "tb_exit_return"), column(want, "tb_exit_return"))
    s = service.job(job).model_dump()
    flags = column(stored, "tb_flags")
    assert s["bars_resolved"] == np.count_nonzero(flags & 16) > 0
    assert s["bars_ambiguous"] == np.count_nonzero(flags & 2)
    assert len(phases) == 2  # bars of both phases were read from H1


def test_a_missing_finer_series_is_said_once_and_the_tie_rule_runs(service, caplog):
    _, h1 = m1_and_h1(end="2024-01-20")
    service.ingest_table(SeriesKey("GBPUSD", "H1"), h1)
    params = {TB: {"resolve_with": "M1", "vol_span": 20}}
    job = service.create_job("GBPUSD", "H1", "2024-01-01", "2024-01-15", labels=[TB],
                             params=params, chunk_size=60, workers=2)
    with caplog.at_level("WARNING", logger="gpubackfill"):
        assert service.execute(job).status == "completed"
    lines = [r.getMessage() for r in caplog.records if "no M1 candles for GBPUSD" in r.getMessage()]
    assert len(lines) == 1 and "tie rule" in lines[0]
    stored = service.export("GBPUSD", "H1", [TB], params)
    plain = compute_labels(h1, TB, {TB: {"vol_span": 20}}, output="arrow")
    at = np.searchsorted(plain.column("ts").to_numpy(), stored.column("ts").to_numpy())
    assert_exact("tb_flags", column(stored, "tb_flags"), column(plain.take(pa.array(at)), "tb_flags"))
    s = service.job(job).model_dump()
    assert s["bars_resolved"] == 0 and s["bars_ambiguous"] == np.count_nonzero(column(stored, "tb_flags") & 2) > 0


def test_new_labels_through_a_job_equal_the_whole_series(service):
    m1, _ = m1_and_h1(end="2024-01-12")
    service.ingest_table(SeriesKey("USDJPY", "M1"), m1)
    labels = ["fixed_horizon", "trend_scanning"]
    params = {"fixed_horizon": {"horizon": 30, "threshold": 0.5},
              "trend_scanning": {"min_window": 5, "max_window": 50}}
    job = service.create_job("USDJPY", "M1", "2024-01-02", "2024-01-10", labels=labels,
                             params=params, chunk_size=1_999, workers=2)
    assert service.execute(job).status == "completed"
    stored = service.export("USDJPY", "M1", labels, params)
    whole = compute_labels(m1, labels, params, output="arrow")
    at = np.searchsorted(whole.column("ts").to_numpy(), stored.column("ts").to_numpy())
    want = whole.take(pa.array(at))
    assert stored.num_rows == service.job(job).model_dump()["candles_total"] > 0
    for name in ("fh_label", "trend_label", "trend_window"):
        assert_exact(name, column(stored, name), column(want, name))
    for name in ("fh_return", "trend_tvalue"):
        assert_float_close(name, column(stored, name), column(want, name))
    assert pd.notna(column(stored, "trend_tvalue")).any()
