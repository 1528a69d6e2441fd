"""Reading candle files (gpubackfill.candles.files.read_candles)."""

import gzip
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from gpubackfill import InvalidCandles, InvalidInput
from gpubackfill.candles.files import read_candles
from gpubackfill.candles.frames import to_series, validate
from gpubackfill.candles.synthetic import generate

# 2024-01-02 03:04:00 UTC and the next two minutes
T0 = 1_704_164_640_000
TS = [T0, T0 + 60_000, T0 + 120_000]
ROWS = "1.1,1.2,1.0,1.15,10\n1.15,1.3,1.1,1.2,11\n1.2,1.25,1.1,1.12,12\n"
HEAD = "open,high,low,close,volume"


def write(tmp_path, name, text):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def csv_with_times(tmp_path, times, col="time", name="c.csv"):
    lines = [f"{col},{HEAD}"]
    for t, row in zip(times, ROWS.splitlines()):
        lines.append(f"{t},{row}")
    return write(tmp_path, name, "\n".join(lines) + "\n")


def ms(text, tz="UTC"):
    return pd.Timestamp(text, tz=tz).tz_convert("UTC").value // 10**6


# --------------------------------------------------------------------------
# time formats in CSV


@pytest.mark.parametrize("times", [
    [t // 1000 for t in TS],                        # epoch seconds
    TS,                                             # epoch milliseconds
    [t * 1000 for t in TS],                         # microseconds
    [t * 1_000_000 for t in TS],                    # nanoseconds
    [f"{t / 1000:.1f}" for t in TS],                # float seconds
    ["2024-01-02 03:04:00", "2024-01-02 03:05:00", "2024-01-02 03:06:00"],
    ["2024-01-02T03:04:00", "2024-01-02T03:05:00", "2024-01-02T03:06:00"],
    ["2024-01-02 03:04", "2024-01-02 03:05", "2024-01-02 03:06"],
    ["2024-01-02T03:04:00Z", "2024-01-02T03:05:00Z", "2024-01-02T03:06:00Z"],
    ["2024-01-02T05:04:00+02:00", "2024-01-02T05:05:00+02:00", "2024-01-02T05:06:00+02:00"],
    ["2024-01-01T22:04:00-05:00", "2024-01-02T03:05:00Z", "2024-01-02 03:06:00"],  # mixed
    ["2024-01-02T03:04:00.000Z", "2024-01-02 03:05:00.0 UTC", "2024-01-02 08:36:00+0530"],
    ["2024.01.02 03:04", "2024.01.02 03:05", "2024/01/02 03:06:00"],
    ["2024.01.02 03:04", "2024.01.02 03:05", "2024.01.02 03:06:00"],
    ["2024-01-02T03:04:00.000000Z", "2024-01-02T03:05:00.000999Z", "2024-01-02T03:06:00.000001Z"],
    ["2024-01-02 3:04", "2024-1-2 03:05", "2024-01-02t03:06z"],
])
def test_csv_time_formats(tmp_path, times):
    table = read_candles(csv_with_times(tmp_path, times))
    assert table.column_names == ["ts", "open", "high", "low", "close", "volume"]
    assert table["ts"].type == pa.int64()
    assert table["ts"].to_pylist() == TS
    assert table["close"].to_pylist() == [1.15, 1.2, 1.12]
    assert table["volume"].to_pylist() == [10.0, 11.0, 12.0]
    assert all(table[c].type == pa.float64() for c in ("open", "high", "low", "close", "volume"))


def test_fractional_times(tmp_path):
    times = ["2024-01-02T03:04:00.5Z", "2024-01-02T03:04:00.123456789Z", "1704164640.25"]
    with pytest.raises(InvalidCandles):  # one column cannot mix text and epoch numbers
        read_candles(csv_with_times(tmp_path, times))
    table = read_candles(csv_with_times(tmp_path, times[:2] + ['"2024-01-02 03:04:01,75"']))
    assert table["ts"].to_pylist() == [T0 + 500, T0 + 123, T0 + 1750]


def test_hour_only_times(tmp_path):
    # ISO 8601's reduced precision, as Arrow reads it: the whole column, or mixed with zones
    hours = [ms("2024-01-02 03:00"), ms("2024-01-02 04:00"), ms("2024-01-02 05:00")]
    path = csv_with_times(tmp_path, ["2024-01-02T03", "2024-01-02T04", "2024-01-02T05"], name="h.csv")
    assert read_candles(path)["ts"].to_pylist() == hours
    path = csv_with_times(tmp_path, ["2024-01-02T03", "2024-01-02 04", "2024-01-02T07+02"], name="m.csv")
    assert read_candles(path)["ts"].to_pylist() == hours


def test_date_only_and_date_time_columns(tmp_path):
    path = csv_with_times(tmp_path, ["2024-01-02", "2024-01-03", "2024-01-04"], col="Date")
    assert read_candles(path)["ts"].to_pylist() == [ms("2024-01-02"), ms("2024-01-03"),
                                                    ms("2024-01-04")]
    # MetaTrader export: tab separated, <DATE> and <TIME>, <TICKVOL>
    text = ("<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<SPREAD>\n"
            "2024.01.02\t03:04:00\t1.1\t1.2\t1.0\t1.15\t10\t3\n"
            "2024.01.02\t03:05:00\t1.15\t1.3\t1.1\t1.2\t11\t3\n")
    table = read_candles(write(tmp_path, "mt5.csv", text))
    assert table["ts"].to_pylist() == TS[:2]
    assert table["volume"].to_pylist() == [10.0, 11.0]


def test_naive_times_in_tz(tmp_path):
    winter = csv_with_times(tmp_path, ["2024-01-02 03:04:00", "2024-01-02 03:05:00",
                                       "2024-01-02 03:06:00"], name="w.csv")
    assert read_candles(winter, tz="Europe/London")["ts"].to_pylist() == TS  # GMT = UTC
    assert read_candles(winter, tz="Asia/Tokyo")["ts"].to_pylist() == [t - 9 * 3_600_000 for t in TS]
    summer = csv_with_times(tmp_path, ["2024-07-02 03:04:00"], name="s.csv")
    assert read_candles(summer, tz="Europe/London")["ts"].to_pylist() == [ms("2024-07-02 02:04")]
    assert read_candles(summer)["ts"].to_pylist() == [ms("2024-07-02 03:04")]


def test_tz_does_not_move_zoned_or_epoch_times(tmp_path):
    zoned = csv_with_times(tmp_path, ["2024-01-02T05:04:00+02:00", "2024-01-02T03:05:00Z",
                                      "2024-01-02 03:06:00"], name="z.csv")
    table = read_candles(zoned, tz="America/New_York")
    assert table["ts"].to_pylist() == [T0, T0 + 60_000, ms("2024-01-02 03:06", "America/New_York")]
    epoch = csv_with_times(tmp_path, TS, name="e.csv")
    assert read_candles(epoch, tz="Asia/Tokyo")["ts"].to_pylist() == TS


def test_dst_repeated_hour_follows_file_order(tmp_path):
    local = ["00:30", "01:00", "01:30", "01:00", "01:30", "02:00"]  # clocks go back at 02:00 BST
    text = "time,open,high,low,close\n" + "".join(f"2024-10-27 {t},1,1,1,1\n" for t in local)
    table = read_candles(write(tmp_path, "dst.csv", text), tz="Europe/London")
    utc = ["23:30", "00:00", "00:30", "01:00", "01:30", "02:00"]
    expected = [ms("2024-10-26 23:30")] + [ms(f"2024-10-27 {t}") for t in utc[1:]]
    assert table["ts"].to_pylist() == expected
    validate(to_series(table))  # strictly increasing in UTC


def test_dst_missing_hour_is_an_error(tmp_path):
    text = "time,open,high,low,close\n2024-03-31 00:30,1,1,1,1\n2024-03-31 01:30,1,1,1,1\n"
    with pytest.raises(InvalidCandles, match=r"row 1 .*does not exist.*'2024-03-31 01:30:00'") as err:
        read_candles(write(tmp_path, "gap.csv", text), tz="Europe/London")
    assert err.value.row == 1


def test_unknown_tz(tmp_path):
    with pytest.raises(InvalidInput, match="Mars/Olympus"):
        read_candles(csv_with_times(tmp_path, TS), tz="Mars/Olympus")


# --------------------------------------------------------------------------
# bad values


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01 00:00", "2024-02-30", "2024-01-02 25:00",
                                 "02/01/2024 03:06", "2024-01-02T03:06:00+99:00", ""])
def test_bad_time_names_row_and_value(tmp_path, bad):
    path = csv_with_times(tmp_path, ["2024-01-02 03:04:00", "2024-01-02 03:05:00", bad])
    with pytest.raises(InvalidCandles) as err:
        read_candles(path)
    message = str(err.value)
    assert "row 2" in message and "line 4" in message and repr(bad) in message
    assert err.value.row == 2


def test_bad_dotted_time_named_as_written(tmp_path):
    path = csv_with_times(tmp_path, ["2024.01.02 03:04", "2024.01.02 03:05", "2024.02.30 03:06"])
    with pytest.raises(InvalidCandles, match=r"row 2 \(line 4\): not a time: '2024.02.30 03:06'"):
        read_candles(path)


@pytest.mark.parametrize("naive_from", [None, 66_000])
def test_first_bad_time_deep_in_a_long_column(tmp_path, naive_from):
    # Text is cast in slices of 65,536 rows; from naive_from on the rows have
    # no zone, so the column is read by the general path.  Either way the
    # first bad row is the one named.
    stamps = pd.date_range("2024-01-01", periods=70_000, freq="min")
    times = list(stamps.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if naive_from:
        times[naive_from:] = stamps[naive_from:].strftime("%Y-%m-%d %H:%M:%S")
    times[68_000], times[69_000] = "2024-02-30T00:00:00Z", "later"
    text = "ts,open,high,low,close\n" + "".join(f"{t},1,1,1,1\n" for t in times)
    with pytest.raises(InvalidCandles, match=r"row 68000 \(line 68002\): not a time: '2024-02-30T00:00:00Z'"):
        read_candles(write(tmp_path, "long.csv", text))


def test_zone_written_as_a_word(tmp_path):
    times = ["2024-01-02 03:04:00 UTC", "2024-01-02 03:05:00 UTC", "2024-01-02 03:06:00GMT"]
    assert read_candles(csv_with_times(tmp_path, times), tz="Asia/Tokyo")["ts"].to_pylist() == TS


def test_bad_epoch_names_row(tmp_path):
    with pytest.raises(InvalidCandles, match=r"row 1 \(line 3\).*'abc'"):
        read_candles(csv_with_times(tmp_path, [TS[0], "abc", TS[2]]))


def test_bad_price_names_row(tmp_path):
    text = f"ts,{HEAD}\n{TS[0]},1,2,0.5,1.5,1\n{TS[1]},1,2,0.5,1.5,1\n{TS[2]},1,2,oops,1.5,1\n"
    with pytest.raises(InvalidCandles, match=r"'low', row 2 \(line 4\).*'oops'"):
        read_candles(write(tmp_path, "p.csv", text))


def test_missing_prices_become_nan_for_validation(tmp_path):
    text = f"ts,{HEAD}\n{TS[0]},1,2,0.5,1.5,1\n{TS[1]},1,,0.5,1.5,1\n{TS[2]},1,NaN,0.5,1.5,\n"
    table = read_candles(write(tmp_path, "n.csv", text))
    high = table["high"].to_numpy()
    assert high[0] == 2.0 and np.isnan(high[1:]).all()
    assert np.isnan(table["volume"].to_numpy()[2])
    with pytest.raises(InvalidCandles, match="row 1"):
        validate(to_series(table))


def test_file_order_kept(tmp_path):
    times = [TS[2], TS[0], TS[0]]  # unsorted and a duplicate: the caller validates
    table = read_candles(csv_with_times(tmp_path, times))
    assert table["ts"].to_pylist() == times
    assert table["close"].to_pylist() == [1.15, 1.2, 1.12]


# --------------------------------------------------------------------------
# columns


def test_case_insensitive_columns_and_volume_aliases(tmp_path):
    text = f"TimeStamp,OPEN,High,low,Close,Tick_Volume\n{TS[0]},1,2,0.5,1.5,7\n"
    table = read_candles(write(tmp_path, "a.csv", text))
    assert table.column_names == ["ts", "open", "high", "low", "close", "volume"]
    assert table["volume"].to_pylist() == [7.0]
    text = f"ts,open,high,low,close,Vol\n{TS[0]},1,2,0.5,1.5,8\n"
    assert read_candles(write(tmp_path, "b.csv", text))["volume"].to_pylist() == [8.0]


def test_no_volume_column_stays_absent(tmp_path):
    text = f"ts,open,high,low,close,spread\n{TS[0]},1,2,0.5,1.5,3\n"
    table = read_candles(write(tmp_path, "nv.csv", text))
    assert table.column_names == ["ts", "open", "high", "low", "close"]


def test_time_column_preference(tmp_path):
    # ts wins over time, time over timestamp, ...
    text = f"open_time,time,ts,open,high,low,close\n1,2,{TS[0]},1,2,0.5,1.5\n"
    assert read_candles(write(tmp_path, "a.csv", text))["ts"].to_pylist() == [TS[0]]
    text = f"open_time,timestamp,time,open,high,low,close\n1,2,{TS[0]},1,2,0.5,1.5\n"
    assert read_candles(write(tmp_path, "b.csv", text))["ts"].to_pylist() == [TS[0]]
    text = f"open_time,open,high,low,close\n{TS[0]},1,2,0.5,1.5\n"
    assert read_candles(write(tmp_path, "c.csv", text))["ts"].to_pylist() == [TS[0]]


def test_missing_columns_listed(tmp_path):
    path = write(tmp_path, "m.csv", f"ts,open,high,Lo,close\n{TS[0]},1,2,0.5,1.5\n")
    with pytest.raises(InvalidInput, match=r"lacks column\(s\) low.*found: 'ts', 'open', 'high', 'Lo', 'close'"):
        read_candles(path)
    path = write(tmp_path, "t.csv", "when,open,high,low,close\nx,1,2,0.5,1.5\n")
    with pytest.raises(InvalidInput, match=r"lacks column\(s\) time.*'when'"):
        read_candles(path)


def test_duplicate_columns_refused(tmp_path):
    path = write(tmp_path, "d.csv", f"ts,open,high,low,close,Close\n{TS[0]},1,2,0.5,1.5,1.5\n")
    with pytest.raises(InvalidInput, match="two columns"):
        read_candles(path)


# --------------------------------------------------------------------------
# file kinds


def test_gzipped_csv(tmp_path):
    path = write(tmp_path, "g.csv.gz", f"ts,{HEAD}\n" + "".join(
        f"{t},{row}\n" for t, row in zip(TS, ROWS.splitlines())))
    table = read_candles(path)
    assert table["ts"].to_pylist() == TS and len(table) == 3


def test_semicolon_csv_and_str_path(tmp_path):
    path = write(tmp_path, "s.csv", f"ts;open;high;low;close\n{TS[0]};1;2;0.5;1.5\n")
    assert read_candles(str(path))["close"].to_pylist() == [1.5]


@pytest.mark.parametrize("name, ext", [("c.xlsx", ".xlsx"), ("c.json", ".json"), ("c.csv.bz2", ".csv.bz2"),
                                       ("candles", "(no extension)")])
def test_unsupported_extension(tmp_path, name, ext):
    path = write(tmp_path, name, "x")
    with pytest.raises(InvalidInput, match=re.escape(ext)):
        read_candles(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        read_candles(tmp_path / "nope.csv")


def test_empty_csv(tmp_path):
    table = read_candles(write(tmp_path, "e.csv", "ts,open,high,low,close\n"))
    assert len(table) == 0 and table.column_names == ["ts", "open", "high", "low", "close"]
    with pytest.raises(InvalidInput, match="empty"):
        read_candles(write(tmp_path, "e2.csv", ""))


def _frame():
    return pd.DataFrame({"open": [1.1, 1.15, 1.2], "high": [1.2, 1.3, 1.25],
                         "low": [1.0, 1.1, 1.1], "close": [1.15, 1.2, 1.12]})


@pytest.mark.parametrize("ext", [".parquet", ".pq"])
@pytest.mark.parametrize("column, tz, expected", [
    (pa.array(TS, pa.int64()), None, TS),
    (pa.array([t // 1000 for t in TS], pa.int32()), "Asia/Tokyo", TS),   # epoch: tz ignored
    (pa.array([t / 1000 for t in TS], pa.float64()), None, TS),
    (pa.array(TS, pa.timestamp("ms")), None, TS),
    (pa.array(TS, pa.timestamp("ms")), "Asia/Tokyo", [t - 9 * 3_600_000 for t in TS]),
    (pa.array([t * 1000 for t in TS], pa.timestamp("us", "America/New_York")), "Asia/Tokyo", TS),
    (pa.array([t // 1000 for t in TS], pa.timestamp("s", "UTC")), None, TS),
    (pa.array(["2024-01-02T03:04:00Z", "2024-01-02 03:05", "2024-01-02T05:06:00+02:00"]), None, TS),
    (pa.array([19724, 19725, 19726], pa.date32()), None, [ms("2024-01-02"), ms("2024-01-03"), ms("2024-01-04")]),
])
def test_parquet_time_types(tmp_path, ext, column, tz, expected):
    table = pa.Table.from_pandas(_frame(), preserve_index=False).add_column(0, "Time", column)
    path = tmp_path / f"c{ext}"
    pq.write_table(table, path)
    out = read_candles(path, tz=tz)
    assert out.column_names == ["ts", "open", "high", "low", "close"]
    assert out["ts"].to_pylist() == expected
    assert out["close"].to_pylist() == [1.15, 1.2, 1.12]


def test_parquet_pandas_frames(tmp_path):
    df = _frame().assign(Volume=np.array([1, 2, 3], np.int64))
    df.index = pd.to_datetime(TS, unit="ms")  # unnamed DatetimeIndex
    df.to_parquet(tmp_path / "idx.parquet")
    out = read_candles(tmp_path / "idx.parquet")
    assert out["ts"].to_pylist() == TS and out["volume"].to_pylist() == [1.0, 2.0, 3.0]
    df = _frame().assign(date=pd.to_datetime(TS, unit="ms", utc=True).tz_convert("Europe/Paris"))
    df.to_parquet(tmp_path / "aware.parquet")
    assert read_candles(tmp_path / "aware.parquet")["ts"].to_pylist() == TS


def test_parquet_missing_columns_and_bad_times(tmp_path):
    pq.write_table(pa.table({"ts": TS, "open": [1.0] * 3, "close": [1.0] * 3}), tmp_path / "m.parquet")
    with pytest.raises(InvalidInput, match=r"high, low.*found: 'ts', 'open', 'close'"):
        read_candles(tmp_path / "m.parquet")
    bad = _frame().assign(ts=["2024-01-02 03:04", None, "2024-01-02 03:06"])
    bad.to_parquet(tmp_path / "b.parquet")
    with pytest.raises(InvalidCandles, match="row 1: missing time"):
        read_candles(tmp_path / "b.parquet")
    with pytest.raises(InvalidInput, match="cannot read"):
        read_candles(write(tmp_path, "junk.parquet", "not parquet"))


# --------------------------------------------------------------------------
# round trips and speed


def test_synthetic_round_trip_csv_and_parquet(tmp_path):
    table = generate("USDJPY", "M1", "2024-01-01", "2024-01-04")
    df = table.to_pandas()
    df.assign(ts=pd.to_datetime(df.ts, unit="ms").dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(
        tmp_path / "r.csv", index=False)
    assert read_candles(tmp_path / "r.csv").equals(table)
    df.assign(ts=pd.to_datetime(df.ts, unit="ms", utc=True)).to_parquet(tmp_path / "r.parquet")
    assert read_candles(tmp_path / "r.parquet").equals(table)


def test_large_csv_round_trip(tmp_path):
    table = generate("BTCUSD", "M1", "2024-01-01", "2024-07-19")  # 288k rows
    times = pc.strftime(table["ts"].cast(pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "big.csv"
    pcsv.write_csv(table.set_column(0, "Time", times), path)
    read_candles(write(tmp_path, "warm.csv", "ts,open,high,low,close\n2024-01-01T00:00Z,1,1,1,1\n"))
    out = read_candles(path)
    assert out.equals(table)


# --------------------------------------------------------------------------
# in batches (iter_candles): the same rows as one read, errors named by file row


def _batched(path, batch_rows, **kw):
    from gpubackfill.candles.files import iter_candles

    parts = list(iter_candles(path, batch_rows=batch_rows, **kw))
    assert all(p.num_rows <= batch_rows for p in parts)
    return parts


@pytest.fixture
def small_csv_blocks(monkeypatch):
    """Arrow's CSV reader parses blocks of 4 KiB: a file of a few hundred
    rows spans many blocks, as a large file does with the real block size."""
    import gpubackfill.candles.files as files

    monkeypatch.setattr(files, "_CSV_BLOCK_BYTES", 1 << 12)


@pytest.mark.parametrize("kind", ["csv", "parquet", "csv.gz"])
@pytest.mark.parametrize("fmt", ["iso", "epoch_s", "mt5"])
def test_batches_join_to_the_whole_file(tmp_path, small_csv_blocks, kind, fmt):
    table = generate("EURUSD", "M1", "2024-01-01", "2024-01-02").slice(0, 1000)
    ts = table["ts"].cast(pa.timestamp("ms"))
    if fmt == "iso":
        cols = {"Time": pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ")}
    elif fmt == "epoch_s":
        cols = {"ts": pc.divide(table["ts"], 1000)}
    else:  # MetaTrader: <DATE> and <TIME> columns
        cols = {"<DATE>": pc.strftime(ts, format="%Y.%m.%d"), "<TIME>": pc.strftime(ts, format="%H:%M")}
    out = pa.table({**cols, **{c: table[c] for c in ("open", "high", "low", "close", "volume")}})
    path = tmp_path / f"c.{kind}"
    if kind == "parquet":
        pq.write_table(out, path, row_group_size=300)  # batches cross row groups
    else:
        plain = tmp_path / "plain.csv"
        pcsv.write_csv(out, plain, pcsv.WriteOptions(quoting_style="none"))
        path.write_bytes(gzip.compress(plain.read_bytes()) if kind == "csv.gz" else plain.read_bytes())
    parts = _batched(path, 77)
    assert len(parts) == 13 and [p.num_rows for p in parts[:-1]] == [77] * 12
    assert pa.concat_tables(parts).equals(table) and read_candles(path).equals(table)


def test_a_bad_value_deep_in_a_file_is_named_by_its_file_row(tmp_path, small_csv_blocks):
    stamps = pd.date_range("2024-01-01", periods=700, freq="min")
    times = list(stamps.strftime("%Y-%m-%d %H:%M:%S"))
    prices = ["1,1,1,1"] * 700
    times[650], prices[400] = "2024-02-30 00:00:00", "1,1,oops,1"
    text = "ts,open,high,low,close\n" + "".join(f"{t},{p}\n" for t, p in zip(times, prices))
    path = write(tmp_path, "bad.csv", text)
    # The price in row 400 is in a later block than the first: Arrow's reader
    # refuses that block, and from there the file is read as text.
    with pytest.raises(InvalidCandles, match=r"'low', row 400 \(line 402\): not a number: 'oops'") as err:
        _batched(path, 128)
    assert err.value.row == 400
    prices[400] = "1,1,1,1"
    with pytest.raises(InvalidCandles, match=r"row 650 \(line 652\): not a time: '2024-02-30 00:00:00'"):
        _batched(write(tmp_path, "bad2.csv", "ts,open,high,low,close\n"
                       + "".join(f"{t},{p}\n" for t, p in zip(times, prices))), 128)


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 4, 100])
def test_dst_repeated_hour_across_batches(tmp_path, batch_rows):
    local = ["00:30", "01:00", "01:30", "01:00", "01:30", "02:00"]  # clocks go back at 02:00 BST
    text = "time,open,high,low,close\n" + "".join(f"2024-10-27 {t},1,1,1,1\n" for t in local)
    path = write(tmp_path, "dst.csv", text)
    parts = _batched(path, batch_rows, tz="Europe/London")
    utc = ["23:30", "00:00", "00:30", "01:00", "01:30", "02:00"]
    expected = [ms("2024-10-26 23:30")] + [ms(f"2024-10-27 {t}") for t in utc[1:]]
    assert pa.concat_tables(parts)["ts"].to_pylist() == expected


def test_epoch_unit_is_the_first_batchs(tmp_path):
    # Seconds, then a batch of rows that alone would read as milliseconds:
    # one column has one unit, the one of its first rows.
    times = [TS[0] // 1000, TS[1] // 1000, TS[2]]
    path = csv_with_times(tmp_path, times)
    parts = _batched(path, 2)
    assert pa.concat_tables(parts)["ts"].to_pylist() == [TS[0], TS[1], TS[2] * 1000]


# --------------------------------------------------------------------------
# layouts: day or month first, headerless files, --date-format (Layout)


def test_the_first_batch_decides_day_or_month_first(tmp_path):
    # 13/01 says day first; the rows after it, alone, would read either way.
    days = ["13/01/2024 00:00", "01/02/2024 00:00", "02/03/2024 00:00"]
    path = csv_with_times(tmp_path, days)
    got = pa.concat_tables(_batched(path, 1))["ts"].to_pylist()
    assert got == [ms("2024-01-13"), ms("2024-02-01"), ms("2024-03-02")]


def test_a_row_against_the_order_the_file_began_with_is_named(tmp_path):
    days = ["01/13/2024 00:00", "01/14/2024 00:00", "15/01/2024 00:00"]  # month first, then not
    with pytest.raises(InvalidCandles, match=r"row 2 \(line 4\): not a time: '15/01/2024 00:00'"):
        read_candles(csv_with_times(tmp_path, days))


def test_an_ambiguous_file_names_the_formats_of_its_own_times(tmp_path):
    path = csv_with_times(tmp_path, ["04-05-2024T03:04:05.250", "04-05-2024T03:05:05.250",
                                     "04-05-2024T03:06:05.250"])
    with pytest.raises(InvalidInput, match=re.escape(
            "--date-format '%m-%d-%YT%H:%M:%S.%f' or '%d-%m-%YT%H:%M:%S.%f'")):
        read_candles(path)


def test_a_headerless_file_names_rows_by_their_line(tmp_path):
    from gpubackfill.candles.files import Layout

    text = "2024.01.02,03:04,1.1,1.2,1.0,1.15,10\n2024.01.02,03:05,1.1,x,1.0,1.15,10\n"
    layout = Layout.parse("date,time,open,high,low,close,volume")
    with pytest.raises(InvalidCandles, match=r"column 'high', row 1 \(line 2\): not a number: 'x'"):
        read_candles(write(tmp_path, "h.csv", text), layout=layout)


def test_a_headerless_file_may_name_columns_to_ignore(tmp_path):
    from gpubackfill.candles.files import Layout

    text = "x,2024.01.02 03:04,1.1,1.2,1.0,1.15\n"
    table = read_candles(write(tmp_path, "h.csv", text), layout=Layout.parse("symbol,time,open,high,low,close"))
    assert table.to_pylist() == [{"ts": T0, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15}]


def test_a_date_format_with_a_zone(tmp_path):
    from gpubackfill.candles.files import Layout

    times = ["02/01/2024 05:04 +0200", "02/01/2024 05:05 +0200", "02/01/2024 05:06 +0200"]
    table = read_candles(csv_with_times(tmp_path, times), tz="Asia/Tokyo",  # a zone in the text wins
                         layout=Layout.parse(date_format="%d/%m/%Y %H:%M %z"))
    assert table["ts"].to_pylist() == TS
