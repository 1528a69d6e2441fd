"""``gpubackfill ingest`` of files as brokers and data vendors write them,
each in the vendor's own layout: the stored candles' times and prices are
checked exactly, as the store holds them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_cli import env_for

from gpubackfill.cli import main

# 2017-04-19 09:00 and 10:00 UTC
NINE, TEN = 1_492_592_400_000, 1_492_596_000_000
CANDLES = [(NINE, 1.0716, 1.072, 1.071, 1.0715), (TEN, 1.0715, 1.0725, 1.0712, 1.0722)]


@pytest.fixture
def ingest(settings, monkeypatch, service, tmp_path):
    """Write ``text`` as a file, ingest it as EURUSD H1 with ``args``; the
    result and the series as stored: (ts ms, open, high, low, close, volume)."""
    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    service.init()

    def run(text: str, *args: str, name: str = "export.csv", newline: str = "\n"):
        path = tmp_path / name
        path.write_bytes(text.replace("\n", newline).encode())
        r = runner.invoke(main, ["ingest", str(path), "--instrument", "EURUSD", "--granularity", "H1",
                                 *args], catch_exceptions=False)
        rows = service.store.rows(
            f"SELECT toUnixTimestamp64Milli(ts), open, high, low, close, volume "
            f"FROM {service.store.db}.candles WHERE instrument = 'EURUSD' AND granularity = 'H1' "
            f"ORDER BY ts")
        return r, [tuple(row) for row in rows]

    return run


def refused(r) -> str:
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.output
    assert r.stderr.startswith("error: ")
    return r.stderr


def with_volume(*volumes: float) -> list[tuple]:
    return [(*c, v) for c, v in zip(CANDLES, volumes)]


# MetaTrader 4 History Center export: no header, date and time apart, CRLF.
MT4 = ("2017.04.19,09:00,1.07160,1.07200,1.07100,1.07150,123\n"
       "2017.04.19,10:00,1.07150,1.07250,1.07120,1.07220,456\n")


def test_a_headerless_metatrader_4_export_with_its_columns_named(ingest):
    r, rows = ingest(MT4, "--columns", "date,time,open,high,low,close,volume", newline="\r\n")
    assert r.exit_code == 0 and "2 inserted" in r.stdout, r.output
    assert rows == with_volume(123.0, 456.0)


def test_a_headerless_file_without_columns_is_refused_with_the_option_that_reads_it(ingest):
    r, rows = ingest(MT4, newline="\r\n")
    line = refused(r)
    assert "has no header line (its first line is data: '2017.04.19,09:00,1.07160" in line
    assert line.rstrip().endswith("--columns date,time,open,high,low,close,volume")
    assert rows == []


def test_a_date_format_for_the_date_column_alone_takes_the_time_column_too(ingest):
    r, rows = ingest(MT4, "--columns", "date,time,open,high,low,close,volume",
                     "--date-format", "%Y.%m.%d")
    assert r.exit_code == 0, r.output
    assert rows == with_volume(123.0, 456.0)


def test_comma_decimals_with_semicolons(ingest):
    text = ("Date;Time;Open;High;Low;Close;Volume\n"
            "19.04.2017;09:00;1,07160;1,07200;1,07100;1,07150;123\n"
            "19.04.2017;10:00;1,07150;1,07250;1,07120;1,07220;456,5\n")
    r, rows = ingest(text)  # recognised: ';' between fields, prices written 1,07160
    assert r.exit_code == 0, r.output
    assert rows == with_volume(123.0, 456.5)
    r, again = ingest(text, "--sep", ";", "--decimal", ",")
    assert r.exit_code == 0 and "2 already present" in r.stdout, r.output


def test_a_decimal_point_in_a_comma_decimal_file_is_named(ingest):
    text = ("Date;Open;High;Low;Close\n"
            "19.04.2017 09:00;1,07160;1,07200;1,07100;1,07150\n"
            "19.04.2017 10:00;1,07150;1.07250;1,07120;1,07220\n")
    line = refused(ingest(text)[0])
    assert "column 'High', row 1 (line 3): not a number: '1.07250'" in line


# TradeStation-style: US dates (month first), the time apart, Up/Down tick counts.
US = ('Date,Time,Open,High,Low,Close,Up,Down\n'
      '04/19/2017,09:00,1.07160,1.07200,1.07100,1.07150,61,62\n'
      '04/19/2017,10:00,1.07150,1.07250,1.07120,1.07220,70,71\n')


def test_us_dates(ingest):
    r, rows = ingest(US)
    assert r.exit_code == 0, r.output
    assert rows == with_volume(0.0, 0.0)


def test_us_dates_in_one_column(ingest):
    text = ("Date,Open,High,Low,Close\n04/19/2017 09:00,1.0716,1.072,1.071,1.0715\n"
            "04/19/2017 10:00,1.0715,1.0725,1.0712,1.0722\n")
    r, rows = ingest(text)
    assert r.exit_code == 0, r.output
    assert rows == with_volume(0.0, 0.0)


# Dukascopy historical data export.
DUKASCOPY = ("Gmt time,Open,High,Low,Close,Volume\n"
             "19.04.2017 09:00:00.000,1.07160,1.07200,1.07100,1.07150,1234.56\n"
             "19.04.2017 10:00:00.000,1.07150,1.07250,1.07120,1.07220,987.6543\n")


@pytest.mark.parametrize("args", [(), ("--columns", "time=Gmt time,open=Open,high=High,low=Low,close=Close"),
                                  ("--date-format", "%d.%m.%Y %H:%M:%S.%f")])
def test_a_dukascopy_export(ingest, args):
    r, rows = ingest(DUKASCOPY, *args)
    assert r.exit_code == 0, r.output
    assert rows == with_volume(1234.56, 987.6543)


def test_a_mapping_names_columns_of_any_name(ingest):
    text = ("Zeit,Eroeffnung,Hoch,Tief,Schluss,Umsatz\n"
            "2017-04-19 09:00,1.0716,1.072,1.071,1.0715,5\n2017-04-19 10:00,1.0715,1.0725,1.0712,1.0722,6\n")
    r, rows = ingest(text, "--columns", "time=Zeit,open=Eroeffnung,high=Hoch,low=Tief,close=Schluss,"
                                        "volume=Umsatz")
    assert r.exit_code == 0, r.output
    assert rows == with_volume(5.0, 6.0)
    line = refused(ingest(text, "--columns", "time=Time")[0])
    assert "--columns maps time to 'Time', which" in line and "found: 'Zeit', 'Eroeffnung'" in line


# HistData.com ASCII bars: no header, ';' between fields, "YYYYMMDD HHMMSS".
HISTDATA = ("20170419 090000;1.071600;1.072000;1.071000;1.071500;0\n"
            "20170419 100000;1.071500;1.072500;1.071200;1.072200;0\n")


def test_a_headerless_file_with_its_date_format(ingest):
    r, rows = ingest(HISTDATA, "--columns", "time,open,high,low,close,volume",
                     "--date-format", "%Y%m%d %H%M%S")
    assert r.exit_code == 0, r.output
    assert rows == with_volume(0.0, 0.0)


def test_a_row_that_does_not_match_the_date_format_is_named(ingest):
    text = HISTDATA.replace("20170419 100000", "2017-04-19 10:00")
    r, rows = ingest(text, "--columns", "time,open,high,low,close,volume", "--date-format", "%Y%m%d %H%M%S")
    line = refused(r)
    assert "row 1 (line 2): does not match --date-format '%Y%m%d %H%M%S': '2017-04-19 10:00'" in line
    assert rows == []


AMBIGUOUS = ("Date,Open,High,Low,Close\n04/05/2017 09:00,1.0716,1.072,1.071,1.0715\n"
             "04/05/2017 10:00,1.0715,1.0725,1.0712,1.0722\n")


def test_dates_that_read_either_way_are_refused_naming_the_option_that_settles_it(ingest):
    r, rows = ingest(AMBIGUOUS)
    line = refused(r)
    assert "'04/05/2017 09:00' that read either way" in line
    assert "--date-format '%m/%d/%Y %H:%M' or '%d/%m/%Y %H:%M'" in line
    assert rows == []


@pytest.mark.parametrize("fmt,day", [("%m/%d/%Y %H:%M", "2017-04-05"), ("%d/%m/%Y %H:%M", "2017-05-04")])
def test_the_date_format_settles_an_ambiguous_file(ingest, fmt, day):
    import pandas as pd

    r, rows = ingest(AMBIGUOUS, "--date-format", fmt)
    assert r.exit_code == 0, r.output
    assert [ts for ts, *_ in rows] == [pd.Timestamp(f"{day} {h}:00", tz="UTC").value // 10**6
                                       for h in ("09", "10")]


def test_dotted_dates_are_day_first_even_where_either_would_read(ingest):
    text = DUKASCOPY.replace("19.04.2017", "05.04.2017")
    r, rows = ingest(text)
    assert r.exit_code == 0, r.output
    assert [ts for ts, *_ in rows] == [NINE - 14 * 86_400_000, TEN - 14 * 86_400_000]


def test_naive_vendor_times_take_the_tz(ingest):
    r, rows = ingest(DUKASCOPY.replace("Gmt time", "Time"), "--tz", "Europe/Berlin")
    assert r.exit_code == 0, r.output
    assert [ts for ts, *_ in rows] == [NINE - 2 * 3_600_000, TEN - 2 * 3_600_000]  # CEST, UTC+2


@pytest.mark.parametrize("args,message", [
    (("--sep", ";;"), "--sep must be one character"),
    (("--columns", "date,time,open"), "--columns names 3 columns but the first line of"),
    (("--columns", "when=Date"), "--columns: 'when=Date' is not FIELD=COLUMN"),
    (("--date-format", "dd.mm.yyyy"), "--date-format 'dd.mm.yyyy' has no % directive"),
])
def test_bad_layout_options_are_one_error_line(ingest, args, message):
    r, rows = ingest(MT4, *args)
    assert message in refused(r)
    assert rows == []


def test_csv_options_on_a_parquet_file_are_refused(ingest, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"ts": [NINE], "open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0]}), path)
    r = CliRunner().invoke(main, ["ingest", str(path), "--instrument", "EURUSD", "--granularity", "H1",
                                  "--sep", ";"], catch_exceptions=False)
    assert "is a Parquet file: --sep is for CSV files only" in refused(r)
