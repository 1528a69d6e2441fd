"""compute_labels in a notebook: the caller's kind of frame back (pandas with
its index and nullable integers, polars, Arrow), the default labels,
close-only frames, and messages that name what is missing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import random_walk

from gpubackfill import InvalidCandles, InvalidInput, InvalidLabelSpec, compute_labels
from gpubackfill.candles.synthetic import generate
from gpubackfill.labels import DEFAULT_LABELS

CLOSE_ONLY = ["vol_scaled_return", "fixed_horizon", "trend_scanning"]
EVERY = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae", "fixed_horizon", "trend_scanning"]
PANDAS_INT = {pa.int8(): "Int8", pa.int32(): "Int32", pa.uint8(): "UInt8"}


@pytest.fixture
def c():
    return random_walk(300, seed=7)


def with_time_index(c) -> pd.DataFrame:
    df = pd.DataFrame(c)
    index = pd.DatetimeIndex(pd.to_datetime(df.pop("ts"), unit="ms", utc=True), name="time")
    return df.set_index(index.tz_convert("Europe/London"))


def assert_same_values(frame: pd.DataFrame, table: pa.Table) -> None:
    """Every label column of ``frame`` holds the Arrow table's values, NULL
    as <NA> in integer columns and NaN in float columns."""
    assert list(frame.columns) == [n for n in table.column_names if n != "ts"]
    for name in frame.columns:
        col = table.column(name)
        if pa.types.is_integer(col.type):
            assert str(frame[name].dtype) == PANDAS_INT[col.type], name
            assert frame[name].isna().to_numpy().tolist() == col.is_null().to_pylist(), name
        else:
            assert frame[name].dtype == np.float64, name
        want = col.to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_array_equal(frame[name].to_numpy(dtype=float, na_value=np.nan), want, err_msg=name)


def test_a_pandas_frame_gets_a_pandas_frame_with_its_own_index(c):
    df = with_time_index(c)
    out = compute_labels(df, EVERY)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(df.index) and out.index.tz == df.index.tz and out.index.name == "time"
    assert "ts" not in out.columns  # the index carries the time
    table = compute_labels(df, EVERY, output="arrow")
    assert_same_values(out, table)
    assert out["tb_label"].isna().any() and out["tb_label"].dtype == "Int8"  # NULL stays NULL


def test_a_ts_column_and_any_index_come_back_as_given(c):
    df = pd.DataFrame(c, index=pd.Index([f"r{i}" for i in range(300)], name="row"))
    out = compute_labels(df, ["mfe_mae"])
    assert out.index.equals(df.index) and out.index.name == "row"
    assert out["ts"].tolist() == df["ts"].tolist() and out["ts"].dtype == np.int64
    assert_same_values(out.drop(columns="ts"), compute_labels(df, ["mfe_mae"], output="arrow"))
    local = df.assign(ts=pd.to_datetime(df["ts"], unit="ms", utc=True).dt.tz_convert("Asia/Tokyo"))
    out = compute_labels(local, ["mfe_mae"])
    assert out["ts"].dtype == local["ts"].dtype and out["ts"].tolist() == local["ts"].tolist()


def test_dropped_rows_take_their_index_with_them(c):
    c["high"][17] = c["close"][17] * 0.9
    c["ts"][60] = c["ts"][59]
    df = pd.DataFrame(c, index=pd.RangeIndex(1000, 1300))
    out = compute_labels(df, ["mfe_mae"], on_invalid="drop")
    assert out.index.tolist() == [i for i in range(1000, 1300) if i not in (1017, 1060)]
    assert out["ts"].tolist() == np.delete(c["ts"], [17, 60]).tolist()
    assert_same_values(out.drop(columns="ts"), compute_labels(df, ["mfe_mae"], on_invalid="drop", output="arrow"))


def test_arrow_stays_arrow_and_output_chooses(c):
    table = pa.table(c)
    out = compute_labels(table, ["mfe_mae"])
    assert isinstance(out, pa.Table) and out.column("ts").type == pa.int64()
    as_pandas = compute_labels(table, ["mfe_mae"], output="pandas")
    assert as_pandas.index.equals(pd.RangeIndex(300)) and as_pandas["ts"].tolist() == c["ts"].tolist()
    assert_same_values(as_pandas.drop(columns="ts"), out)
    with pytest.raises(InvalidInput, match="output must be one of 'arrow', 'pandas', 'polars', got 'csv'"):
        compute_labels(table, ["mfe_mae"], output="csv")


def test_labels_default_to_the_default_set(c):
    table = pa.table(c)
    assert compute_labels(table).equals(compute_labels(table, list(DEFAULT_LABELS)))
    assert "tb_label" in compute_labels(table).column_names


@pytest.mark.parametrize("label", CLOSE_ONLY)
def test_labels_of_close_alone_need_only_close(c, label):
    full = compute_labels(pa.table(c), label)
    close_only = compute_labels(pa.table({"ts": c["ts"], "close": c["close"]}), label)
    assert close_only.equals(full)
    frame = compute_labels(with_time_index(c)[["close"]], label)
    assert_same_values(frame, full)


def test_a_label_that_reads_high_and_low_says_what_it_misses(c):
    close_only = pd.DataFrame({"ts": c["ts"], "close": c["close"]})
    with pytest.raises(InvalidInput, match=r"^enhanced_triple_barrier needs open, high, low; "
                                           r"the input has ts, close$"):
        compute_labels(close_only, "enhanced_triple_barrier")
    with pytest.raises(InvalidInput, match=r"^enhanced_triple_barrier needs open, high, low; mfe_mae needs "
                                           r"high, low; the input has ts, close$"):
        compute_labels(close_only)  # the default set
    no_open = pd.DataFrame({k: c[k] for k in ("ts", "high", "low", "close")})
    with pytest.raises(InvalidInput, match=r"^enhanced_triple_barrier needs open; the input has ts, high, low"):
        compute_labels(no_open, EVERY)
    assert compute_labels(no_open, ["mfe_mae"], output="arrow").equals(
        compute_labels(pd.DataFrame(c), ["mfe_mae"], output="arrow"))


def test_candle_rules_apply_between_the_columns_present(c):
    # open above close with no high or low: no rule relates them, so it stands.
    oc = pd.DataFrame({"ts": c["ts"], "open": c["close"] * 1.01, "close": c["close"]})
    compute_labels(oc, CLOSE_ONLY)
    hc = pd.DataFrame({"ts": c["ts"], "high": c["high"], "close": c["close"]})
    hc.loc[9, "high"] = hc.loc[9, "close"] * 0.99
    with pytest.raises(InvalidCandles, match=r"row 9 .*high is below max\(open, close\) \[high=\S+ close=\S+\]$"):
        compute_labels(hc, CLOSE_ONLY)
    close = pd.DataFrame({"ts": c["ts"], "close": c["close"]})
    close.loc[4, "close"] = -1.0
    with pytest.raises(InvalidCandles, match=r"row 4 .*zero or negative \[close=-1.0\]$"):
        compute_labels(close, CLOSE_ONLY)
    out = compute_labels(close, CLOSE_ONLY, on_invalid="drop")
    assert len(out) == 299 and 4 not in out.index


def test_numbers_in_messages_read_as_numbers(c):
    c["high"][17] = 0.5
    with pytest.raises(InvalidCandles) as err:
        compute_labels(pd.DataFrame(c), ["mfe_mae"])
    assert "high=0.5 " in str(err.value) and "np." not in str(err.value)
    with pytest.raises(InvalidLabelSpec, match=r"tie must be one of 'sl', 'tp', 'skip', got 'both'$"):
        compute_labels(pd.DataFrame(c), "enhanced_triple_barrier",
                       {"enhanced_triple_barrier": {"tie": np.str_("both")}})
    with pytest.raises(InvalidLabelSpec, match=r"must be an integer, got 2.5$"):
        compute_labels(pd.DataFrame(c), "mfe_mae", {"mfe_mae": {"horizon": np.float64(2.5)}})
    with pytest.raises(InvalidInput, match=r"bar_ms must be a positive integer \(milliseconds\), got -5$"):
        compute_labels(pd.DataFrame(random_walk(50)), "enhanced_triple_barrier",
                       {"enhanced_triple_barrier": {"resolve_with": "M1"}},
                       finer=pd.DataFrame(random_walk(50)), bar_ms=np.int64(-5))
    with pytest.raises(InvalidInput, match=r"seed must be a non-negative integer, got -1$"):
        generate("EURUSD", "M1", "2024-01-02", "2024-01-03", seed=np.int64(-1))


def test_polars_in_polars_out(c):
    frame = pl.DataFrame(c)
    out = compute_labels(frame, EVERY)
    assert isinstance(out, pl.DataFrame)
    table = compute_labels(pa.table(c), EVERY)
    assert out.to_arrow().equals(pl.from_arrow(table).to_arrow())  # same values, nulls and types
    assert out.schema["tb_label"] == pl.Int8 and out.schema["mfe_bars"] == pl.Int32
    timed = frame.with_columns(pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC"))
    out = compute_labels(timed, ["trend_scanning"])
    assert out["ts"].dtype == timed["ts"].dtype and out["ts"].equals(timed["ts"])
    assert compute_labels(timed, ["trend_scanning"], output="arrow").equals(
        compute_labels(pa.table(c), ["trend_scanning"]))
    # polars has no index: a DatetimeIndex comes back as the ts column.
    from_pandas = compute_labels(with_time_index(c), ["mfe_mae"], output="polars")
    assert from_pandas.columns[0] == "ts" and from_pandas["ts"].dtype.time_zone == "Europe/London"
    assert from_pandas["ts"].dt.epoch("ms").to_list() == c["ts"].tolist()
    assert from_pandas.drop("ts").to_arrow().equals(
        compute_labels(pa.table(c), ["mfe_mae"]).drop_columns(["ts"]))
