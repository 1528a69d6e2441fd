"""Ingest in batches (gpubackfill.storage.ingest): a file read, checked and written a
batch at a time gives what one batch over the whole file gives -- the same
rows kept, the same rows rejected (named by file row), nothing written for a
refused file, nothing changed by a second ingest, and a change log that
``update`` can trust."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from gpubackfill import InvalidCandles, InvalidInput
from gpubackfill.candles.synthetic import SCHEMA, generate
from gpubackfill.storage import ingest as ingest_mod
from gpubackfill.storage.clickhouse_store import SeriesKey

M1 = 60_000
BATCH, READ = 64, 50  # rows written and rows read at a time: neither divides the other


@pytest.fixture
def small_blocks(monkeypatch):
    """Spill blocks of 16 rows, so a merge holds many blocks of many runs."""
    monkeypatch.setattr(ingest_mod, "BLOCK_ROWS", 16)


def stored(store, key):
    return store.arrow(
        f"SELECT toUnixTimestamp64Milli(ts) AS ts, open, high, low, close, volume FROM {store.db}.candles "
        f"WHERE instrument = {{i:String}} AND granularity = {{g:String}} ORDER BY ts",
        {"i": key.instrument, "g": key.granularity}).cast(SCHEMA)


def messy(order: str) -> pa.Table:
    """601 M1 candles: two rows with one ts (other prices), a candle with high
    below close, and a zero price; in ``order``.  In time order the two
    twins are rows 63 and 64, the last of one written batch and the first of
    the next; in other orders they are anywhere."""
    t = generate("EURUSD", "M1", "2024-01-01", "2024-01-02").slice(0, 600)
    rows = t.to_pylist()
    twin = dict(rows[63], close=rows[63]["close"] * 1.0001, high=rows[63]["high"] * 1.001)
    rows[200] = dict(rows[200], high=rows[200]["close"] * 0.99)   # high below close
    rows[333] = dict(rows[333], low=0.0)                          # a zero price
    rows.insert(64, twin)
    if order == "newest_first":
        rows = rows[::-1]
    elif order == "shuffled":
        rows = [rows[i] for i in np.random.default_rng(5).permutation(len(rows))]
    return pa.Table.from_pylist(rows, schema=t.schema)


def write(table: pa.Table, path) -> None:
    if str(path).endswith(".parquet"):
        pq.write_table(table, path, row_group_size=97)
    else:
        times = pc.strftime(table["ts"].cast(pa.timestamp("ms")), format="%Y-%m-%d %H:%M:%S")
        pcsv.write_csv(table.set_column(0, "Time", times), path)


@pytest.mark.parametrize("order", ["ascending", "newest_first", "shuffled"])
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_file_in_batches_is_ingested_as_in_one(service, tmp_path, small_blocks, order, kind):
    table = messy(order)
    path = tmp_path / f"c.{kind}"
    write(table, path)
    store = service.store
    service.init()
    # one batch: the whole input at once
    one = service.ingest_table(SeriesKey("WHOLE", "M1"), table, max_rejects=3)
    key = SeriesKey("BATCHED", "M1")
    many = ingest_mod.ingest_file(store, key, path, max_rejects=3, batch_rows=BATCH, read_rows=READ)
    assert many == one
    assert stored(store, key).equals(stored(store, SeriesKey("WHOLE", "M1")))
    # As in one batch: of the two rows with one ts, the later in the file is
    # the duplicate, wherever the two are in time order or in the batches.
    ts = table["ts"].to_numpy()
    values, counts = np.unique(ts, return_counts=True)
    twins = np.flatnonzero(ts == values[counts == 2][0])
    assert [r for r, _, why in many.rejected if "duplicate" in why] == [twins.max()]
    assert many.rows_read == 601 and many.inserted == 598 and len(many.rejected) == 3
    assert many.sorted == (order != "ascending")
    if order == "ascending":
        assert list(twins) == [63, 64]
    assert [r for r, _, _ in many.rejected] == sorted(r for r, _, _ in many.rejected)


def test_each_row_is_judged_against_the_last_row_kept_in_any_batch(service, tmp_path):
    orig = generate("EURUSD", "M1", "2024-01-01", "2024-01-02").slice(0, 300).to_pylist()
    rows = orig[:129]
    rows[128] = dict(rows[128], open=-1.0)   # rejected, the last row of the first batch
    rows.append(dict(orig[128]))             # its ts again, good: judged against row 127, kept
    rows += orig[129:257]
    rows.append(dict(orig[256]))             # row 257's ts again, first of the third batch
    rows += orig[257:]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    service.init()
    key = SeriesKey("EURUSD", "M1")
    r = ingest_mod.ingest_file(service.store, key, path, max_rejects=2, batch_rows=129, read_rows=129)
    assert [(row, "duplicate" in why) for row, _, why in r.rejected] == [(128, False), (258, True)]
    assert "zero or negative" in r.rejected[0][2]
    assert (r.rows_read, r.inserted, r.sorted) == (302, 300, False)
    assert stored(service.store, key)["ts"].to_pylist() == [c["ts"] for c in orig]


@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_a_refused_file_writes_nothing(service, tmp_path, order):
    store = service.store
    service.init()
    key = SeriesKey("EURUSD", "M1")
    table = messy(order)
    # A price that is not a number in the last rows of a CSV: read batches
    # before it were fine, and none of them is written.
    times = pc.strftime(table["ts"].cast(pa.timestamp("ms")), format="%Y-%m-%d %H:%M:%S")
    text = table.set_column(0, "ts", times).to_pandas()
    text["close"] = text["close"].astype(str)
    text.loc[590, "close"] = "n/a?"
    text.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InvalidCandles, match=r"'close', row 590 \(line 592\): not a number: 'n/a\?'"):
        ingest_mod.ingest_file(store, key, tmp_path / "bad.csv", batch_rows=BATCH, read_rows=READ)
    # Hourly candles said to be M1: refused from their spacing, over all rows.
    hourly = generate("EURUSD", "H1", "2024-01-01", "2024-02-01")
    if order == "shuffled":
        hourly = hourly.take(np.random.default_rng(1).permutation(hourly.num_rows))
    pq.write_table(hourly, tmp_path / "h1.parquet")
    with pytest.raises(InvalidInput, match="most often 1 hour apart.*it looks like H1"):
        ingest_mod.ingest_file(store, key, tmp_path / "h1.parquet", batch_rows=BATCH, read_rows=READ)
    assert store.series_summary(key) == (0, None, None) and store.changes() == []


def test_ingest_again_changes_nothing_and_changed_candles_replace_old_ones(service, tmp_path):
    store = service.store
    service.init()
    key = SeriesKey("EURUSD", "M1")
    t = generate("EURUSD", "M1", "2024-01-01", "2024-01-02").slice(0, 640)
    pq.write_table(t, tmp_path / "a.parquet")
    first = ingest_mod.ingest_file(store, key, tmp_path / "a.parquet", batch_rows=BATCH, read_rows=READ)
    assert (first.inserted, first.updated, first.unchanged) == (640, 0, 0)
    log = sorted(store.changes())
    assert len(log) == 10  # one record per written batch of 64 rows
    again = ingest_mod.ingest_file(store, key, tmp_path / "a.parquet", batch_rows=BATCH, read_rows=READ)
    assert (again.inserted, again.updated, again.unchanged, again.rejected) == (0, 0, 640, [])
    assert sorted(store.changes()) == log and stored(store, key).equals(t)

    # Three candles of the fifth batch (rows 256..319) change.
    ts = t["ts"].to_numpy()
    stamp_before = {rng: store.change_stamp(key, *rng) for rng in
                    [(int(ts[0]), int(ts[100])), (int(ts[250]), int(ts[400]))]}
    close = t["close"].to_numpy().copy()
    high = t["high"].to_numpy().copy()
    for i in (260, 270, 300):
        close[i] *= 1.0002
        high[i] = max(high[i], close[i])
    changed = t.set_column(4, "close", pa.array(close)).set_column(2, "high", pa.array(high))
    pq.write_table(changed, tmp_path / "b.parquet")
    r = ingest_mod.ingest_file(store, key, tmp_path / "b.parquet", batch_rows=BATCH, read_rows=READ)
    assert (r.inserted, r.updated, r.unchanged) == (0, 3, 637)
    assert stored(store, key).equals(changed)
    new = [c for c in store.changes() if c not in log]
    assert [(a, b) for _, _, a, b, _ in new] == [(int(ts[260]), int(ts[300]))]
    assert store.change_stamp(key, int(ts[0]), int(ts[100])) == stamp_before[(int(ts[0]), int(ts[100]))]
    assert store.change_stamp(key, int(ts[250]), int(ts[400])) != stamp_before[(int(ts[250]), int(ts[400]))]


_INGEST = """
import sys
import pyarrow.parquet as pq
from gpubackfill.candles.synthetic import SCHEMA, generate
n = int(sys.argv[1])
start = 1_104_537_600_000
pq.write_table(generate("BTCUSD", "M1", start, start + n * 60_000), sys.argv[2])
"""


def test_an_ingest_of_10m_candles_streams_under_2gb(tmp_path, redis_socket):
    """``gpubackfill ingest`` of a 10M-row Parquet file by a process whose
    peak RSS is measured (before batches: 2.16 GB; a second ingest of the
    same file, which read every stored row back at once: 3.5 GB)."""
    import os
    import subprocess
    import sys

    from conftest import make_settings
    from test_cli import env_for

    n = 10_000_000
    env = {**os.environ, **env_for(make_settings(tmp_path / "home", redis_socket))}
    path = tmp_path / "c.parquet"
    subprocess.run([sys.executable, "-c", _INGEST, str(n), str(path)], env=env, check=True, timeout=100)
    for expect in (f"{n} inserted", f"{n} already present"):
        proc = subprocess.Popen([sys.executable, "-m", "gpubackfill", "ingest", str(path), "--instrument",
                                 "BTCUSD", "--granularity", "M1"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out = proc.stdout.read()
        assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
        assert expect in out, out
        peak = usage.ru_maxrss * 1024  # kB on Linux
        assert peak < 2 * 1024**3, f"peak RSS {peak / 1e9:.2f} GB ({expect})"
