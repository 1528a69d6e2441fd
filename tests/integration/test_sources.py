"""Sources: a job over candles where they already live (a foreign-schema
table, an epoch table, Parquet files through ``file()``) equals the same job
over the same candles ingested into the built-in table, and never writes to
the source."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpubackfill.candles.synthetic import generate
from gpubackfill.errors import InvalidInput
from gpubackfill.jobs.spec import EVER
from gpubackfill.storage.clickhouse_store import SeriesKey

START, END = "2024-01-02", "2024-01-09"
MAPS = ["instrument=symbol", "ts=time", "open=o", "high=h", "low=l", "close=c"]


def candles(instrument="EURUSD", granularity="M1", start=START, end=END) -> pa.Table:
    """Synthetic candles with Float32-exact prices (as a Float32 table holds them)."""
    t = generate(instrument, granularity, start, end)
    for name in ("open", "high", "low", "close", "volume"):
        t = t.set_column(t.column_names.index(name), name,
                         t.column(name).cast(pa.float32()).cast(pa.float64()))
    return t


def shuffled(t: pa.Table, seed: int = 1) -> pa.Table:
    return t.take(pa.array(np.random.default_rng(seed).permutation(t.num_rows)))


def foreign_table(service, t: pa.Table, instrument="EURUSD", name="ohlc_m1") -> str:
    """``market.ohlc_m1(symbol, time, o, h, l, c, v)``: Float32 prices, time
    in New York, a Nullable volume with some NULLs, rows in random order."""
    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.{name} (symbol LowCardinality(String), time DateTime('America/New_York'),
            o Float32, h Float32, l Float32, c Float32, v Nullable(Float32), note String)
        ENGINE = MergeTree ORDER BY symbol""")
    insert_foreign(service, f"{db}.{name}", t, instrument)
    return f"{db}.{name}"


def insert_foreign(service, rel: str, t: pa.Table, instrument="EURUSD") -> None:
    """``t`` into a ``foreign_table``, as its owner would write it."""
    volume = t.column("volume").to_numpy().copy()
    nulls = np.zeros(len(volume), bool)
    nulls[::7] = True
    rows = shuffled(pa.table({
        "symbol": [instrument] * t.num_rows,
        "time": t.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("s", tz="UTC")),
        **{k: t.column(c).cast(pa.float32()) for k, c in
           (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))},
        "v": pa.array(volume.astype(np.float32), mask=nulls),
        "note": ["x"] * t.num_rows}))
    for at in range(0, rows.num_rows, 3000):  # several parts
        service.store.client.insert_arrow(rel, rows.slice(at, 3000))


def ingest_like_source(service, t: pa.Table, instrument="EURUSD", null_volume_every=7) -> None:
    """The same candles into the built-in table (a NULL volume read as 0)."""
    volume = t.column("volume").to_numpy().copy()
    if null_volume_every:
        volume[::null_volume_every] = 0
    t = t.set_column(t.column_names.index("volume"), "volume", pa.array(volume))
    service.ingest_table(SeriesKey(instrument, "M1"), t)


def labels_of(service, job_id: str, source: str = "") -> pa.Table:
    s = service.job(job_id).model_dump()
    key = SeriesKey(s["instrument"], s["granularity"], source)
    return service.store.read_labels(key, s["label_set"])


def source_content(service, relation: str) -> tuple:
    return tuple(service.store.rows(
        f"SELECT count(), groupBitXor(cityHash64(*)) FROM {relation}")[0])


def assert_same_labels(a: pa.Table, b: pa.Table) -> None:
    assert a.num_rows == b.num_rows > 0
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name


def test_foreign_schema_table_equals_the_ingested_candles(service):
    service.init()
    t = candles()
    rel = foreign_table(service, t)
    before = source_content(service, rel)
    service.sources.add("mkt", rel, MAPS + ["volume=v"], granularity="M1")
    ingest_like_source(service, t)
    built_in = service.start("EURUSD", "M1", chunk_size=1500, workers=2)
    from_source = service.start("EURUSD", "M1", chunk_size=1500, workers=2, source="mkt")
    s = service.job(from_source).model_dump()
    assert s["status"] == "completed" and s["chunks_total"] > 3
    assert s["candles_total"] == t.num_rows
    assert_same_labels(labels_of(service, from_source, "mkt"), labels_of(service, built_in))
    # Two series, one per source: the built-in rows did not change or double.
    n, u = service.store.label_counts(SeriesKey("EURUSD", "M1"), s["label_set"])
    assert n == u == t.num_rows
    n, u = service.store.label_counts(SeriesKey("EURUSD", "M1", "mkt"), s["label_set"])
    assert n == u == t.num_rows
    # Read only: the source holds what it held, and nothing was mutated.
    assert source_content(service, rel) == before
    assert not service.store.rows("SELECT count() FROM system.mutations WHERE database = {d:String} "
                                  "AND table = 'ohlc_m1'", {"d": service.store.db})[0][0]


def test_the_job_record_names_its_source(service):
    service.init()
    rel = foreign_table(service, candles(end="2024-01-03"))
    service.sources.add("mkt", rel, MAPS, granularity="M1")
    job = service.create_job("EURUSD", "M1", source="mkt", chunk_size=500)
    assert service.state.job(job)["source"] == "mkt"
    assert service.job(job).model_dump()["source"] == "mkt"
    chunk = service.store.rows(f"SELECT DISTINCT source FROM {service.store.db}.label_chunks")
    assert chunk == []  # nothing ran yet
    service.execute(job)
    chunk = service.store.rows(f"SELECT DISTINCT source FROM {service.store.db}.label_chunks")
    assert chunk == [("mkt",)]
    with pytest.raises(InvalidInput, match="no source named 'nope'"):
        service.create_job("EURUSD", "M1", source="nope")
    with pytest.raises(InvalidInput, match="no candles for GBPUSD M1 in source mkt"):
        service.create_job("GBPUSD", "M1", source="mkt")


def test_int64_epoch_table_equals_the_ingested_candles(service):
    service.init()
    t = candles("GBPUSD")
    db = service.store.db
    service.store.command(f"CREATE TABLE {db}.epochs (sym String, t Int64, open Float64, high Float64, "
                          f"low Float64, close Float64) ENGINE = MergeTree ORDER BY t")
    service.store.client.insert_arrow(f"{db}.epochs", shuffled(pa.table({
        "sym": ["GBPUSD"] * t.num_rows, "t": pa.array(t.column("ts").to_numpy() // 1000),
        **{c: t.column(c) for c in ("open", "high", "low", "close")}})))
    service.sources.add("ep", f"{db}.epochs", ["instrument=sym", "ts=t", "open=open", "high=high",
                                              "low=low", "close=close"],
                       granularity="M1", ts_unit="s")
    t0 = t.set_column(t.column_names.index("volume"), "volume", pa.array(np.zeros(t.num_rows)))
    service.ingest_table(SeriesKey("GBPUSD", "M1"), t0)
    built_in = service.start("GBPUSD", "M1", chunk_size=2000, workers=2)
    from_source = service.start("GBPUSD", "M1", chunk_size=2000, workers=2, source="ep")
    assert_same_labels(labels_of(service, from_source, "ep"), labels_of(service, built_in))


@pytest.mark.parametrize("unit,per_ms", [("s", None), ("ms", 1), ("us", 1000), ("ns", 1_000_000)])
def test_an_integer_epoch_is_read_exactly_and_through_its_sort_key(service, unit, per_ms):
    """Each --ts-unit reads the same instants (a microsecond or nanosecond
    epoch truncated toward zero to its millisecond, before 1970 too), and a
    chunk's range reaches a sort key on the raw column: its granules are
    read, not the table."""
    service.init()
    t = candles("GBPUSD", start="2024-01-01", end="2024-04-01")   # ~130k candles
    db = service.store.db
    service.store.command(f"CREATE TABLE {db}.ep_{unit} (sym String, t Int64, open Float64, high Float64, "
                          f"low Float64, close Float64) ENGINE = MergeTree ORDER BY (sym, t) "
                          f"SETTINGS index_granularity = 1024")
    ms = t.column("ts").to_numpy()
    raw = ms // 1000 if per_ms is None else ms * per_ms + (per_ms - 1)  # the last tick of each ms
    service.store.client.insert_arrow(f"{db}.ep_{unit}", shuffled(pa.table({
        "sym": ["GBPUSD"] * t.num_rows, "t": pa.array(raw),
        **{c: t.column(c) for c in ("open", "high", "low", "close")}})))
    # Before 1970 (a tick of a finer unit truncated toward zero, as intDiv does).
    before = np.array([-61] if per_ms is None else [-61_000 * per_ms, -1500 * per_ms, -per_ms, 1 - per_ms])
    service.store.client.insert_arrow(f"{db}.ep_{unit}", pa.table({
        "sym": ["OLD"] * len(before), "t": pa.array(before),
        **{c: pa.array(np.ones(len(before))) for c in ("open", "high", "low", "close")}}))
    service.store.command(f"OPTIMIZE TABLE {db}.ep_{unit} FINAL")
    service.sources.add("ep", f"{db}.ep_{unit}", ["instrument=sym", "ts=t", "open=open", "high=high",
                                                   "low=low", "close=close"],
                        granularity="M1", ts_unit=unit)
    got, _, _ = service.store.load(SeriesKey("OLD", "M1", "ep"), *EVER, 0, 0)
    want = [-61_000] if per_ms is None else [-61_000, -1500, -1, 0]
    assert got.column("ts").to_pylist() == sorted(want)
    a, b = int(ms[60_000]), int(ms[70_000])
    out = []
    # With its halo's bounds from the plan, as a job's inner chunks load.
    seen = rows_read(service, lambda: out.append(service.store.load(
        SeriesKey("GBPUSD", "M1", "ep"), a, b, 500, 500, int(ms[59_500]), int(ms[70_499]))))
    loaded, first, own = out[0]
    assert (first, own, loaded.num_rows) == (500, 10_000, 11_000)
    np.testing.assert_array_equal(loaded.column("ts").to_numpy(), ms[59_500:70_500])
    np.testing.assert_array_equal(loaded.column("close").to_numpy(), t.column("close").to_numpy()[59_500:70_500])
    assert sum(n for _, n in seen) < t.num_rows // 4, seen


def test_parquet_folder_through_file_equals_the_ingested_candles(service, tmp_path):
    service.init()
    t = candles("USDJPY")
    folder = tmp_path / "usdjpy"
    folder.mkdir()
    rows = shuffled(t.append_column("instrument", pa.array(["USDJPY"] * t.num_rows)))
    for n, at in enumerate(range(0, rows.num_rows, 4000)):
        part = rows.slice(at, 4000)
        pq.write_table(part.set_column(0, "ts", part.column("ts").cast(pa.timestamp("ms", tz="UTC"))),
                       folder / f"part-{n}.parquet")
    service.sources.add("files", f"file('{folder}/*.parquet', 'Parquet')",
                       ["instrument=instrument", "ts=ts", "open=open", "high=high", "low=low",
                        "close=close", "volume=volume"], granularity="M1")
    service.ingest_table(SeriesKey("USDJPY", "M1"), t)
    built_in = service.start("USDJPY", "M1", chunk_size=2500, workers=2)
    from_source = service.start("USDJPY", "M1", chunk_size=2500, workers=2, source="files")
    assert_same_labels(labels_of(service, from_source, "files"), labels_of(service, built_in))


def test_removing_a_source_keeps_its_labels(service):
    service.init()
    rel = foreign_table(service, candles(end="2024-01-03"))
    service.sources.add("mkt", rel, MAPS, granularity="M1")
    job = service.start("EURUSD", "M1", chunk_size=1000, source="mkt")
    rows = labels_of(service, job, "mkt").num_rows
    service.sources.remove("mkt")
    assert [s.name for s in service.sources.all()] == []
    assert labels_of(service, job, "mkt").num_rows == rows > 0


def rows_read(service, action) -> list[tuple[str, int]]:
    """(statement, rows chDB read from storage) of each statement ``action`` runs."""
    client, seen = service.store.client, []
    run = client._query

    def recorded(sql, fmt, parameters):
        res = run(sql, fmt, parameters)
        seen.append((sql, res.storage_rows_read()))
        return res

    client._query = recorded
    try:
        action()
    finally:
        del client._query
    return seen


def test_a_chunk_read_from_a_source_reads_its_granules_not_the_whole_series(service):
    """A team's table kept in (symbol, time) order: a chunk's range and its
    halo's bounds are read from the sort key, as from the built-in table."""
    service.init()
    t = candles(start="2024-01-01", end="2024-09-01")   # ~250k candles
    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.kept (symbol LowCardinality(String), time DateTime('America/New_York'),
            o Float32, h Float32, l Float32, c Float32) ENGINE = MergeTree ORDER BY (symbol, time)""")
    service.store.client.insert_arrow(f"{db}.kept", shuffled(pa.table({
        "symbol": ["EURUSD"] * t.num_rows,
        "time": t.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("s", tz="UTC")),
        **{k: t.column(c).cast(pa.float32()) for k, c in
           (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))}})))
    service.store.command(f"OPTIMIZE TABLE {db}.kept FINAL")
    service.sources.add("kept", f"{db}.kept", MAPS, granularity="M1")
    ts = t.column("ts").to_numpy()
    a, b = int(ts[80_000]), int(ts[90_000])
    got = []
    seen = rows_read(service, lambda: got.append(
        service.store.load(SeriesKey("EURUSD", "M1", "kept"), a, b, 500, 500)))
    loaded, first, own = got[0]
    assert (first, own, loaded.num_rows) == (500, 10_000, 11_000)
    # Granules of 8,192 rows around the range and the halo's bound lookups
    # (~76k rows), not the series (~250k) once or more.
    assert sum(n for _, n in seen) < t.num_rows // 2, seen
