"""The Store on the embedded chDB adapter: parameters, halo loads, concurrent writes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

from gpubackfill.candles.synthetic import generate
from gpubackfill.storage.clickhouse_client import STREAM_MAX_ROWS
from gpubackfill.storage.clickhouse_store import SeriesKey, Store

M1 = 60_000


@pytest.fixture
def store(settings):
    s = Store(settings)
    s.init_schema()
    return s


def test_parameter_values_round_trip_unformatted(store):
    nasty = "x'); DROP TABLE candles; --\\\n\t\"é"
    assert store.rows("SELECT {s:String}, {a:Array(Int64)}, {n:Int64}",
                      {"s": nasty, "a": [1, -2, 3], "n": -5}) == [(nasty, [1, -2, 3], -5)]


def test_a_result_outlives_the_queries_after_it(store):
    """A table read from chDB stays as it was while other queries run: its
    buffers are chDB's result, uncompressed (a table over a result that was
    already freed read other queries' rows)."""
    key = SeriesKey("EURUSD", "M1")
    candles = generate("EURUSD", "M1", "2024-01-01", "2024-01-15")
    store.ingest(key, candles, np.zeros(candles.num_rows, np.uint8), str)
    ts = candles.column("ts").to_numpy()
    first, _, _ = store.load(key, int(ts[0]), int(ts[4000]), 0, 0)
    import gc

    gc.collect()
    for i in range(1, 3):
        store.load(key, int(ts[4000 * i]), int(ts[4000 * (i + 1)]), 0, 0)
        store.rows("SELECT number FROM numbers(100000)")
    np.testing.assert_array_equal(first.column("ts").to_numpy(), ts[:4000])
    np.testing.assert_array_equal(first.column("close").to_numpy(), candles.column("close").to_numpy()[:4000])


@pytest.mark.parametrize("start_at, end_at, back, ahead", [
    (0, 100, 50, 10),        # no rows before the chunk: the halo is cut short
    (300, 400, 0, 0),        # no halo at all
    (900, 1000, 50, 10),     # no rows after the chunk
    (500, 500, 50, 10),      # an empty chunk still returns its halo
    (200, 700, 150, 30),
])
def test_load_returns_chunk_and_halo(store, start_at, end_at, back, ahead):
    key = SeriesKey("EURUSD", "M1")
    candles = generate("EURUSD", "M1", "2024-01-01", "2024-01-03").slice(0, 1000)
    store.ingest(key, candles, np.zeros(candles.num_rows, np.uint8), str)
    ts = candles.column("ts").to_numpy()
    a = int(ts[start_at])
    b = int(ts[end_at]) if end_at < len(ts) else int(ts[-1]) + M1
    table, first, own = store.load(key, a, b, back, ahead)
    lo, hi = max(0, start_at - back), min(len(ts), end_at + ahead)
    np.testing.assert_array_equal(table.column("ts").to_numpy(), ts[lo:hi])
    np.testing.assert_array_equal(table.column("close").to_numpy(),
                                  candles.column("close").to_numpy()[lo:hi])
    assert (first, own) == (start_at - lo, end_at - start_at)


# Chunks of label rows on either side of the embedded client's switch from
# one IPC stream message to the Python() table function.
SMALL, LARGE = STREAM_MAX_ROWS - 1, STREAM_MAX_ROWS + 1


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_concurrent_writes_keep_each_chunk_its_own_rows(store, n):
    """Threads write at the same time through the process's one client."""
    from gpubackfill.labels import resolve

    set_id = store.ensure_label_table(resolve(["mfe_mae"]))
    key = SeriesKey("EURUSD", "M1")
    t0, chunks = 1_704_067_200_000, 6

    def write(k: int) -> None:
        ts = t0 + (k * n + np.arange(n, dtype=np.int64)) * M1
        value = np.full(n, float(k))
        labels = pa.table({"ts": ts, "mfe": value, "mae": -value,
                           "mfe_bars": np.full(n, k, np.int32), "mae_bars": np.full(n, k, np.int32)})
        store.write_labels(key, set_id, int(ts[0]), int(ts[-1]) + M1, labels, f"h{k}", 0, "job")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, range(chunks)))
    with ThreadPoolExecutor(2) as pool:  # a re-run replaces, never duplicates
        list(pool.map(write, range(chunks)))
    got = store.read_labels(key, set_id)
    k = (got.column("ts").to_numpy() - t0) // M1 // n
    assert got.num_rows == chunks * n == store.label_counts(key, set_id)[0]
    np.testing.assert_array_equal(got.column("mfe").to_numpy(), k.astype(float))
    np.testing.assert_array_equal(got.column("mae_bars").to_numpy(), k)


@pytest.mark.parametrize("n", [3, SMALL, LARGE])
def test_either_insert_path_writes_the_rows_nulls_and_keys_it_was_given(store, n):
    from gpubackfill.labels import resolve

    set_id = store.ensure_label_table(resolve(["mfe_mae"]))
    key = SeriesKey("GBPUSD", "H1")
    rng = np.random.default_rng(n)
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * H1
    mfe = rng.normal(size=n)
    missing = rng.random(n) < 0.2
    bars = rng.integers(0, 24, n).astype(np.int32)
    labels = pa.table({"ts": ts, "mfe": pa.array(mfe, mask=missing), "mae": -mfe,
                       "mfe_bars": pa.array(bars, mask=missing), "mae_bars": bars})
    store.write_labels(key, set_id, int(ts[0]), int(ts[-1]) + H1, labels, "h", 0, "job")
    got = store.rows(f"SELECT instrument, granularity, label_set, count(), countIf(mfe IS NULL), "
                     f"countIf(mfe_bars IS NULL), sum(mae), sum(mae_bars) "
                     f"FROM {store.db}.labels_{set_id} GROUP BY instrument, granularity, label_set")
    assert len(got) == 1
    inst, gran, ls, count, null_mfe, null_bars, sum_mae, sum_bars = got[0]
    assert (inst, gran, ls, count) == ("GBPUSD", "H1", set_id, n)
    assert null_mfe == null_bars == int(missing.sum())
    assert sum_mae == pytest.approx(float((-mfe).sum()))
    assert sum_bars == int(bars.sum())
    back = store.read_labels(key, set_id)
    np.testing.assert_array_equal(back.column("ts").to_numpy(), ts)
    np.testing.assert_array_equal(np.asarray(back.column("mfe").is_null()), missing)
    np.testing.assert_array_equal(back.column("mfe").to_numpy(zero_copy_only=False)[~missing], mfe[~missing])


def test_label_rows_are_written_as_compact_parts_in_any_label_table(store):
    """A label table writes its inserts in one file per part (cheaper for
    ClickHouse than a file per column), a table made before that setting
    gets it when a job next ensures it, and the rows read back the same."""
    from gpubackfill.labels import resolve

    set_id = store.ensure_label_table(resolve(["mfe_mae"]))
    old = resolve(["mfe_mae"], {"mfe_mae": {"horizon": 7}})
    old_id = store.ensure_label_table(old)
    # As an earlier version left it: no part settings of its own.
    store.command(f"ALTER TABLE {store.db}.labels_{old_id} "
                  "RESET SETTING min_bytes_for_wide_part, min_parts_to_merge_at_once")
    assert "min_bytes_for_wide_part" not in _engine_full(store, f"labels_{old_id}")
    assert "min_parts_to_merge_at_once" not in _engine_full(store, f"labels_{old_id}")
    assert store.ensure_label_table(old) == old_id
    n = 300_000
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * H1
    labels = pa.table({"ts": ts, "mfe": np.arange(n, dtype=float), "mae": -np.arange(n, dtype=float),
                       "mfe_bars": np.ones(n, np.int32), "mae_bars": np.zeros(n, np.int32)})
    key = SeriesKey("GBPUSD", "H1")
    for sid in (set_id, old_id):
        store.write_labels(key, sid, int(ts[0]), int(ts[-1]) + H1, labels, "h", 0, "job")
        parts = store.rows(f"SELECT part_type, rows FROM system.parts WHERE database = '{store.db}' "
                           f"AND table = 'labels_{sid}' AND active")
        assert parts == [("Compact", n)], sid
        back = store.read_labels(key, sid)
        np.testing.assert_array_equal(back.column("mfe").to_numpy(), labels.column("mfe").to_numpy())
    for sid in (set_id, old_id):
        assert "min_bytes_for_wide_part" in _engine_full(store, f"labels_{sid}")
        assert "min_parts_to_merge_at_once = 10" in _engine_full(store, f"labels_{sid}")


def test_a_label_tables_parts_wait_for_ten_before_they_merge(store):
    """Merging label rows costs chDB more than inserting them, so a label
    table merges no fewer than ten parts at once: nine chunks' parts stay as
    they are (the merge selector itself finds nothing to do, where a table
    without the setting merges them), and the tenth brings them together."""
    from gpubackfill.labels import resolve

    set_id = store.ensure_label_table(resolve(["mfe_mae"]))
    table = f"{store.db}.labels_{set_id}"
    plain = f"{store.db}.merge_default"
    store.command(f"CREATE TABLE {plain} AS {table} ENGINE = MergeTree "
                  "ORDER BY (instrument, granularity, label_set, ts)")
    key, n = SeriesKey("GBPUSD", "H1"), 1_000

    def chunk(i: int) -> tuple[int, pa.Table]:
        ts = 1_704_067_200_000 + (i * n + np.arange(n, dtype=np.int64)) * H1
        return int(ts[0]), pa.table({"ts": ts, "mfe": np.full(n, float(i)), "mae": np.zeros(n),
                                     "mfe_bars": np.ones(n, np.int32), "mae_bars": np.ones(n, np.int32)})

    def parts(name: str) -> int:
        db, t = name.split(".")
        return store.rows(f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = '{t}' "
                          "AND active")[0][0]

    for i in range(9):
        start, rows = chunk(i)
        store.write_labels(key, set_id, start, start + n * H1, rows, f"h{i}", 0, "job")
        store.insert_arrow("merge_default", rows, {"instrument": "GBPUSD", "granularity": "H1",
                                                   "label_set": set_id})
    # The selector's own choice (OPTIMIZE without FINAL): nothing to merge in
    # nine parts; the plain table's parts, merged or not yet, can be.
    store.command(f"SYSTEM STOP MERGES {plain}")
    with pytest.raises(Exception, match="no need to merge"):
        store.command(f"OPTIMIZE TABLE {table} SETTINGS optimize_throw_if_noop = 1")
    assert parts(table) == 9
    if parts(plain) > 1:
        store.command(f"SYSTEM START MERGES {plain}")
        store.command(f"OPTIMIZE TABLE {plain} SETTINGS optimize_throw_if_noop = 1")
    start, rows = chunk(9)
    store.write_labels(key, set_id, start, start + n * H1, rows, "h9", 0, "job")
    deadline = time.monotonic() + 60  # a background merge of 10k rows; the bound only ends a hang
    while parts(table) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert parts(table) == 1
    back = store.read_labels(key, set_id)
    assert back.num_rows == 10 * n
    np.testing.assert_array_equal(back.column("mfe").to_numpy(), np.repeat(np.arange(10.0), n))
    store.command(f"DROP TABLE {plain}")


def _engine_full(store, table: str) -> str:
    return store.rows(f"SELECT engine_full FROM system.tables WHERE database = '{store.db}' "
                      f"AND name = '{table}'")[0][0]


H1 = 3_600_000
H1 = 3_600_000


def _finer_candles(t0: int, n: int, seed: int) -> pa.Table:
    """M1 candles from ``t0`` with gaps, plus some off the minute grid."""
    rng = np.random.default_rng(seed)
    ts = t0 + np.arange(n, dtype=np.int64) * M1
    ts = ts[rng.random(n) > 0.1]
    ts = np.unique(np.r_[ts, ts[rng.choice(len(ts), 60, replace=False)] + rng.integers(1, M1, 60)])
    close = 1.2 + np.cumsum(rng.normal(0, 1e-4, len(ts)))
    return pa.table({"ts": ts, "open": close - 5e-5, "high": close + 2e-4, "low": close - 2e-4,
                     "close": close, "volume": np.ones(len(ts))})


def test_load_bars_reads_exactly_the_candles_of_the_bars(store):
    """Bars of two phases (some overlapping a neighbour, as at a daylight-saving
    shift), at both ends of the series, with no candles, before and across
    1970-01-01 (bar numbers of negative times), asked twice and out of order."""
    key = SeriesKey("XAUUSD", "M1")
    t0 = -5 * 86_400_000 - 17 * M1  # 1969-12-26 23:43
    candles = _finer_candles(t0, 12 * 1440, seed=3)
    store.ingest(key, candles, np.zeros(candles.num_rows, np.uint8), str)
    ts = candles.column("ts").to_numpy()
    rng = np.random.default_rng(4)
    on_hour = (t0 // H1 + rng.integers(0, 12 * 24, 30)) * H1
    half_past = (t0 // H1 + rng.integers(0, 12 * 24, 10)) * H1 + H1 // 2
    starts = np.r_[on_hour, half_past, on_hour[:5] + H1 // 2,  # overlapping pairs
                   t0 // H1 * H1 - H1,                          # before the first candle: empty
                   t0 // H1 * H1,                               # holds the first candle
                   ts[-1] // H1 * H1,                           # runs past the last one
                   -H1 // 2, -2 * H1,                           # across 1970, before it
                   on_hour[:3]]                                 # asked twice
    rng.shuffle(starts)
    got = store.load_bars(key, starts, H1, ("ts", "high", "low"))
    want = np.zeros(len(ts), dtype=bool)
    for s in starts:
        want |= (ts >= s) & (ts < s + H1)
    assert got.column_names == ["ts", "high", "low"]
    np.testing.assert_array_equal(got.column("ts").to_numpy(), ts[want])
    np.testing.assert_array_equal(got.column("low").to_numpy(), candles.column("low").to_numpy()[want])
    assert store.load_bars(key, np.array([t0 - 10 * H1]), H1).num_rows == 0
    assert store.load_bars(key, np.array([], dtype=np.int64), H1).num_rows == 0


def test_load_bars_reads_only_the_granules_of_its_bars(store, monkeypatch):
    """The key prunes by the bars' numbers: a few bars spread over a long span
    read a few granules, not the span (which they would with 8,192-row ones)."""
    key = SeriesKey("XAUUSD", "M1")
    t0 = 1_704_067_200_000
    candles = _finer_candles(t0, 30 * 1440, seed=5)
    store.ingest(key, candles, np.zeros(candles.num_rows, np.uint8), str)
    starts = t0 + np.array([1, 170, 333, 501, 700]) * H1
    asked: list[tuple[str, dict]] = []
    real = store.arrow
    monkeypatch.setattr(store, "arrow", lambda sql, p=None: asked.append((sql, p)) or real(sql, p))
    got = store.load_bars(key, starts, H1, ("ts", "open", "high", "low"))
    assert got.num_rows > 0 and len(asked) == 1
    sql, params = asked[0]
    marks = store.rows(f"EXPLAIN ESTIMATE {sql}", params)[0][-1]
    span = store.rows(f"EXPLAIN ESTIMATE SELECT ts FROM {store.db}.candles WHERE "
                      f"instrument = 'XAUUSD' AND granularity = 'M1'")[0][-1]
    assert span >= 30 and marks <= 10, (marks, span)


def test_a_threads_engine_handle_is_not_closed_by_the_threads_exit(store):
    """Closing a chDB handle releases the GIL inside chDB; a thread whose
    state was cleared as the interpreter finalized could not take it back
    and was unwound through chDB's frames, which crashed the process at exit.
    So a thread's exit leaves its handle open (the client owns it), and the
    next thread to open a handle closes those of threads that have ended."""
    import threading

    client = store.client
    opened: list = []

    def work():
        assert client.rows("SELECT 1") == [(1,)]
        opened.append(client._handle())

    first = threading.Thread(target=work)
    first.start()
    first.join()
    handle = opened[0]
    assert handle is not client._handle()  # the thread had a handle of its own
    # Still open after the thread's state was cleared: it answers here.
    assert handle.query("SELECT 41 + 1", "CSV").bytes().strip() == b"42"
    second = threading.Thread(target=work)
    second.start()
    second.join()
    # The second thread's opening closed the first thread's handle ...
    with pytest.raises(AttributeError):  # chDB's closed Connection has no engine left to ask
        handle.query("SELECT 1", "CSV")
    # ... and left its own open, for the next to close.
    assert opened[1].query("SELECT 2", "CSV").bytes().strip() == b"2"


_WATCH_MERGES = r"""
import os, sys, threading, time
from gpubackfill.config import Settings
from gpubackfill.storage.clickhouse_store import Store

store = Store(Settings.from_env({"GPUBACKFILL_HOME": sys.argv[1], "GPUBACKFILL_CHDB_MERGE_NICE": "7",
                                 "REDIS_URL": "redis://127.0.0.1:1"}, dotenv=False))
print(store.rows("SELECT value FROM system.server_settings "
                 "WHERE name = 'os_threads_nice_value_merge_mutate'")[0][0], flush=True)
store.command("CREATE TABLE default.t (x UInt64, y Float64) ENGINE = MergeTree ORDER BY x")
seen, done = set(), threading.Event()

def watch():
    # The nice value of every thread the engine names MergeMutate, as the
    # kernel reports it, while merges run.
    while not done.is_set():
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = open(f"/proc/self/task/{tid}/stat").read()
            except OSError:
                continue
            if stat[stat.index("(") + 1:stat.rindex(")")] == "MergeMutate":
                seen.add(int(stat[stat.rindex(")") + 2:].split()[16]))

watcher = threading.Thread(target=watch)
watcher.start()
for i in range(12):
    store.command(f"INSERT INTO default.t SELECT number + {i} * 1000000, rand() FROM numbers(1000000)")
deadline = time.monotonic() + 60
while time.monotonic() < deadline and (store.rows(
        "SELECT count() FROM system.parts WHERE database = 'default' AND table = 't' AND active")[0][0] > 2
        or store.rows("SELECT count() FROM system.merges")[0][0]):
    time.sleep(0.05)
done.set()
watcher.join()
print(" ".join(map(str, sorted(seen))), flush=True)
"""


def test_the_engine_runs_its_merges_at_the_configured_nice_value(tmp_path):
    """GPUBACKFILL_CHDB_MERGE_NICE reaches the embedded engine, and its
    merge threads run at that nice value while they merge (a fresh process:
    the engine's startup settings are those of its first open)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _WATCH_MERGES, str(tmp_path / "home")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    setting, nice = res.stdout.splitlines()
    assert setting == "7"
    with open("/proc/self/status") as f:
        caps = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    if not caps & (1 << 23):  # CAP_SYS_NICE: without it ClickHouse leaves the value alone
        pytest.skip("needs CAP_SYS_NICE to see ClickHouse apply the nice value")
    assert 7 in {int(v) for v in nice.split()}, f"merge threads seen at nice {nice!r}"
