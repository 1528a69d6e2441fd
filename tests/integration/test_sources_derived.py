"""Coarser bars derived in ClickHouse from a source's M1 equal pandas'
``resample`` of the same M1 (empty buckets dropped), D1 with a 17:00 New
York day; a job over them equals ``compute_labels`` on that resample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from compare import assert_label_columns
from test_cli import cli  # noqa: F401 (fixture)
from test_sources import MAPS, candles, foreign_table

from gpubackfill import compute_labels
from gpubackfill.jobs.spec import EVER
from gpubackfill.storage.clickhouse_store import SeriesKey

START, END = "2024-01-02", "2024-01-24"  # no daylight-saving change in New York


def resample(m1: pa.Table, rule: str, tz: str = "UTC", offset: str | None = None) -> pd.DataFrame:
    df = m1.to_pandas()
    # Wall-clock time of ``tz`` (pandas applies a day's offset only to a naive index).
    df.index = pd.DatetimeIndex(pd.to_datetime(df.pop("ts"), unit="ms", utc=True)
                                .dt.tz_convert(tz).dt.tz_localize(None))
    out = df.resample(rule, offset=offset, origin="start_day" if offset else "epoch").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    out = out.dropna(subset=["open"])
    out.index = out.index.tz_localize(tz).tz_convert("UTC").as_unit("ms").asi8
    return out


@pytest.fixture
def m1(service):
    service.init()
    t = candles(start=START, end=END)
    rel = foreign_table(service, t)
    service.sources.add("mkt", rel, MAPS + ["volume=v"], granularity="M1",
                       day_start="17:00", day_tz="America/New_York")
    volume = t.column("volume").to_numpy().copy()
    volume[::7] = 0  # NULL in the source, 0 once read
    return t.set_column(t.column_names.index("volume"), "volume", pa.array(volume))


@pytest.mark.parametrize("granularity,rule,tz,offset", [
    ("M5", "5min", "UTC", None), ("H1", "1h", "UTC", None), ("H4", "4h", "UTC", None),
    ("D1", "1D", "America/New_York", "17h"),
])
def test_derived_bars_equal_pandas_resample(service, m1, granularity, rule, tz, offset):
    want = resample(m1, rule, tz, offset)
    key = SeriesKey("EURUSD", granularity, "mkt")
    got, first, own = service.store.load(key, *EVER, 0, 0)
    assert own == got.num_rows == len(want) and first == 0
    np.testing.assert_array_equal(got.column("ts").to_numpy(), want.index.to_numpy())
    for c in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got.column(c).to_numpy(), want[c].to_numpy(), err_msg=c)
    np.testing.assert_allclose(got.column("volume").to_numpy(), want["volume"].to_numpy(), rtol=1e-12)
    # Planning counts derived bars exactly.
    assert service.store.range_counts("candles", [key], *EVER)[key] == len(want)


def test_a_job_over_derived_h1_equals_compute_labels_on_the_resample(service, m1):
    want_bars = resample(m1, "1h")
    bars = pa.table({"ts": pa.array(want_bars.index.to_numpy()),
                     **{c: pa.array(want_bars[c].to_numpy()) for c in
                        ("open", "high", "low", "close", "volume")}})
    job = service.start("EURUSD", "H1", chunk_size=97, workers=2, source="mkt")
    s = service.job(job).model_dump()
    assert s["status"] == "completed" and s["candles_total"] == bars.num_rows and s["chunks_total"] > 3
    stored = service.store.read_labels(SeriesKey("EURUSD", "H1", "mkt"), s["label_set"])
    whole = compute_labels(bars, s["labels"])
    np.testing.assert_array_equal(stored.column("ts").to_numpy(), whole.column("ts").to_numpy())
    assert_label_columns(stored, whole)


def test_a_granularity_the_source_cannot_serve_is_refused(service, m1):
    from gpubackfill.errors import InvalidInput

    with pytest.raises(InvalidInput, match="source mkt has no S5 candles"):
        service.create_job("EURUSD", "S5", source="mkt")


def bars_tables(service) -> list[str]:
    """The copies of derived bars in the store (``engine/bars.py``)."""
    return [t for (t,) in service.store.rows(
        "SELECT name FROM system.tables WHERE database = {d:String} AND name LIKE 'bars\\_%'",
        {"d": service.store.db})]


def test_a_derived_job_aggregates_its_source_once(service, m1):
    """The job's derived bars are aggregated from the M1 candles by one
    statement, into the job's copy; planning (counts, bounds, chunk
    marks) and every chunk read that copy without aggregating, and the
    copy is gone when the job has settled."""
    from test_sources import rows_read

    jobs = []
    seen = rows_read(service, lambda: jobs.append(
        service.create_job("EURUSD", "H1", chunk_size=97, workers=2, source="mkt")))
    seen += rows_read(service, lambda: service.execute(jobs[0]))
    s = service.job(jobs[0]).model_dump()
    assert s["status"] == "completed"
    assert s["candles_total"] == len(resample(m1, "1h")) and s["chunks_total"] > 3
    aggregating = [sql for sql, _ in seen if "'H1' AS granularity" in sql]
    assert len(aggregating) == 1 and aggregating[0].startswith(f"INSERT INTO {service.store.db}.bars_"), \
        aggregating
    # Planning's read of the bars' ts, and the chunks' (consecutive small
    # chunks share one read), are of the copy.
    copy_reads = [sql for sql, _ in seen if ".bars_" in sql and sql.lstrip().startswith("SELECT")]
    assert len(copy_reads) >= 2 and "toUnixTimestamp64Milli(ts) AS t" in copy_reads[0], copy_reads
    assert bars_tables(service) == []


def test_the_copy_is_dropped_when_a_job_settles_and_made_again_when_it_resumes(service, m1):
    """Nothing is left in the store by a completed, a cancelled or a dry-run
    job; a job resumed without its copy (a crash lost it) makes it again
    and writes the labels an uninterrupted job writes."""
    import threading

    first = service.start("EURUSD", "H1", chunk_size=97, workers=2, source="mkt")
    s = service.job(first).model_dump()
    assert s["status"] == "completed" and bars_tables(service) == []
    want = service.store.read_labels(SeriesKey("EURUSD", "H1", "mkt"), s["label_set"])

    # Queued, then cancelled before any driver ran it.
    queued = service.create_job("EURUSD", "H1", chunk_size=97, workers=2, source="mkt",
                                labels=["fixed_horizon"])
    assert bars_tables(service) == [f"bars_{queued}"]
    assert service.cancel(queued) == "cancelled" and bars_tables(service) == []

    # A dry run plans (and copies) but queues nothing; nor does a refused duplicate.
    assert service.preview_job("EURUSD", "H1", chunk_size=97, workers=2, source="mkt")["chunks"] > 3
    assert bars_tables(service) == []

    # Stopped before any chunk: the job is not settled, its copy stays.
    service.store.command(f"TRUNCATE TABLE {service.store.db}.labels_{s['label_set']}")
    service.store.command(f"TRUNCATE TABLE {service.store.db}.label_chunks")
    job = service.create_job("EURUSD", "H1", chunk_size=97, workers=2, source="mkt")
    stop = threading.Event()
    stop.set()
    run = service.execute(job, stop=stop)
    assert run.status != "completed" and bars_tables(service) == [f"bars_{job}"], run.status
    # The copy lost (a crash of the store's disk, a hand): the resumed job makes it again.
    service.store.drop_table(f"bars_{job}")
    assert service.execute(job).status == "completed"
    assert service.store.read_labels(SeriesKey("EURUSD", "H1", "mkt"), s["label_set"]).equals(want)
    assert bars_tables(service) == []

    # A chunk dead-lettered (a bar whose open is no number): the job settles with errors, no copy.
    m1_ts = m1.column("ts").to_numpy()
    first = int(m1_ts[np.flatnonzero(m1_ts % 3_600_000 == 0)[10]])  # an H1 bar's first candle
    service.store.command(f"ALTER TABLE {service.store.db}.ohlc_m1 UPDATE o = nan WHERE "
                          f"toUnixTimestamp(time) = {first // 1000} SETTINGS mutations_sync = 2")
    bad = service.start("EURUSD", "H1", chunk_size=97, workers=2, source="mkt", force=True)
    b = service.job(bad).model_dump()
    assert b["status"] in ("failed", "completed_with_errors") and b["errors"], b["status"]
    assert bars_tables(service) == []


def test_cleanup_sweeps_the_copies_settles_left_behind(service, m1, cli):
    """Copies a settle did not drop (a crash, ClickHouse away at the time):
    ``cleanup`` drops those of settled jobs and the old ones of jobs Redis
    no longer knows; it keeps a queued job's copy, a fresh unknown one (it
    may be one being planned) and any other table."""
    from gpubackfill.engine import bars

    done = service.start("EURUSD", "H1", chunk_size=97, workers=2, source="mkt")
    queued = service.create_job("EURUSD", "H1", chunk_size=97, workers=2, source="mkt",
                                labels=["fixed_horizon"])
    db = service.store.db
    for name in (f"bars_{done}", "bars_0123456789ab", "bars_notajob", "bars_fedcba987654"):
        service.store.command(f"CREATE TABLE {db}.{name} (ts Int64) ENGINE = MergeTree ORDER BY ts")
    assert sorted(bars_tables(service)) == sorted([f"bars_{done}", f"bars_{queued}", "bars_0123456789ab",
                                                   "bars_notajob", "bars_fedcba987654"])
    # Fresh: an unknown job's copy is kept for the grace period.
    assert bars.sweep(service.store, service.state) == [done]
    assert f"bars_{done}" not in bars_tables(service) and "bars_0123456789ab" in bars_tables(service)
    # Past it (as if an hour old), the unknown jobs' copies go; the queued job's stays.
    assert sorted(bars.sweep(service.store, service.state, grace_s=0)) == ["0123456789ab", "fedcba987654"]
    assert sorted(bars_tables(service)) == sorted([f"bars_{queued}", "bars_notajob"])
    # The command a user runs: once the job is settled, its copy goes too.
    service.cancel(queued)
    service.store.command(f"CREATE TABLE {db}.bars_{queued} (ts Int64) ENGINE = MergeTree ORDER BY ts")
    out = cli("cleanup", "--older-than", "30")
    assert out.exit_code == 0, out.output
    assert f"dropped 1 leftover copy of derived bars: {queued}" in out.output
    assert bars_tables(service) == ["bars_notajob"]


def test_a_derived_chunk_aggregates_its_own_candles_not_the_whole_series(service, m1):
    """A range on a derived bar's ts reaches the source's sort key: a
    chunk of H1 bars aggregates the granules of its own M1 candles."""
    from test_sources import rows_read

    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.kept (symbol LowCardinality(String), time DateTime('America/New_York'),
            o Float32, h Float32, l Float32, c Float32) ENGINE = MergeTree ORDER BY (symbol, time)
        SETTINGS index_granularity = 1024""")
    service.store.command(f"INSERT INTO {db}.kept SELECT symbol, time, o, h, l, c FROM {db}.ohlc_m1")
    service.store.command(f"OPTIMIZE TABLE {db}.kept FINAL")
    service.sources.add("kept", f"{db}.kept", MAPS, granularity="M1")
    want = resample(m1, "1h")
    ts = want.index.to_numpy()
    key = SeriesKey("EURUSD", "H1", "kept")
    got = []
    seen = rows_read(service, lambda: got.append(service.store.load(key, int(ts[200]), int(ts[260]), 0, 0)))
    loaded, first, own = got[0]
    assert own == loaded.num_rows == 60 and first == 0
    np.testing.assert_array_equal(loaded.column("high").to_numpy(), want["high"].to_numpy()[200:260])
    # 60 hours of M1 (3,600 candles) and the edge granules, not the ~31k of the series.
    assert sum(n for _, n in seen) < m1.num_rows // 4, seen


@pytest.mark.parametrize("chunk_size,back,ahead", [(97, 0, 0), (97, 30, 12), (1000, 5, 5), (5, 5, 3)])
def test_marks_from_the_bars_ts_equal_the_stores_chunk_marks(service, m1, chunk_size, back, ahead):
    from gpubackfill.jobs import plan

    service.ingest_table(SeriesKey("EURUSD", "M1"), m1)
    key = SeriesKey("EURUSD", "M1")
    ts = m1.column("ts").to_numpy()
    a, b = int(ts[100]), int(ts[-100])
    inside = ts[(ts >= a) & (ts < b)]
    want = service.store.chunk_marks([key], a, b, chunk_size, back, ahead, {key: len(inside)})[key]
    got = plan.marks_of(inside, chunk_size, back, ahead)
    if len(inside) > chunk_size:
        assert got == want
    assert plan.series_runs(len(inside), got, chunk_size, back, ahead, b) == \
        plan.series_runs(len(inside), want, chunk_size, back, ahead, b)


def test_every_instrument_of_a_derived_granularity(service, m1):
    """``*`` over a derived granularity: the instruments whose base has
    candles, their bars counted exactly, from a range left open."""
    rel = service.store.source("mkt").relation
    from test_sources import candles, insert_foreign

    other = candles("GBPUSD", start="2024-01-10", end="2024-01-12")
    insert_foreign(service, rel, other, "GBPUSD")
    job = service.create_job("*", "H1", workers=2, source="mkt")
    s = service.job(job).model_dump()
    assert sorted((x["instrument"], x["granularity"]) for x in s["series"]) == [
        ("EURUSD", "H1"), ("GBPUSD", "H1")]
    assert s["candles_total"] == len(resample(m1, "1h")) + len(resample(other, "1h"))


def float64_source(service, name="raw") -> pa.Table:
    """EURUSD M1 in a table whose volumes are any Float64 (a sum of them
    depends on its order), written in many small parts, granules of 128
    rows: reads of it are split over threads at varied places."""
    from test_sources import shuffled

    t = candles(start=START, end=END)
    volume = np.random.default_rng(7).random(t.num_rows) * 1000 + 1 / 3
    t = t.set_column(t.column_names.index("volume"), "volume", pa.array(volume))
    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.{name} (symbol String, time DateTime('UTC'), o Float64, h Float64,
            l Float64, c Float64, v Float64) ENGINE = MergeTree ORDER BY (symbol, time)
        SETTINGS index_granularity = 128""")
    rows = shuffled(pa.table({
        "symbol": ["EURUSD"] * t.num_rows,
        "time": t.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("s", tz="UTC")),
        **{k: t.column(c) for k, c in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"),
                                       ("v", "volume"))}}))
    for at in range(0, rows.num_rows, 1500):
        service.store.client.insert_arrow(f"{db}.{name}", rows.slice(at, 1500))
    service.sources.add(name, f"{db}.{name}", MAPS + ["volume=v"], granularity="M1")
    return t


def test_a_derived_bars_volume_does_not_depend_on_the_read(service):
    """A bar's volume is the same bit for bit read with the whole series
    (a job's copy) or with a window of it (a chunk, ``update``'s prints):
    Float64 volumes added in another order differ in the last bit."""
    service.init()
    float64_source(service)
    key = SeriesKey("EURUSD", "H1", "raw")
    whole, _, _ = service.store.load(key, *EVER, 0, 0)
    ts, volume = whole.column("ts").to_numpy(), whole.column("volume").to_numpy()
    # As a job's copy holds them.
    service.store.copy_bars("bars_test", [key], {key: 10 ** 6})
    copied, _, _ = service.store.load(SeriesKey("EURUSD", "H1", "raw", "bars_test"), *EVER, 0, 0)
    service.store.drop_table("bars_test")
    assert copied.equals(whole)
    for size in (7, 31, 97):
        for at in range(0, len(ts), size):
            part, _, own = service.store.load(key, int(ts[at]), int(ts[min(at + size, len(ts) - 1)]), 0, 0)
            assert np.array_equal(part.column("volume").to_numpy().view(np.uint64),
                                  volume[at:at + own].view(np.uint64)), (size, at)


def test_update_over_derived_bars_finds_exactly_the_chunks_a_change_reaches(service):
    """A job over H1 derived from Float64 M1 (read from its copy), then
    ``update`` over the source itself: nothing when nothing changed;
    after one corrected M1 candle, exactly the chunks whose rows or halo
    hold its H1 bar; then nothing again."""
    from test_sources_update import halo_reaches

    from gpubackfill.labels import DEFAULT_LABELS, halo, resolve

    service.init()
    t = float64_source(service)
    job = service.start("EURUSD", "H1", chunk_size=40, workers=2, source="raw")
    assert service.job(job).model_dump()["status"] == "completed"
    assert service.plan_update(source="raw", chunk_size=40, workers=2) == []

    def recs():
        return {(a, b): at for i, g, s, a, b, rows, inc, at in service.store.manifest("raw")}

    before = recs()
    assert len(before) >= 8
    h1 = resample(t, "1h").index.to_numpy()
    m1_ts = t.column("ts").to_numpy()
    starts = sorted(a for a, _ in before)
    m = int(np.searchsorted(m1_ts, starts[4])) + 90  # inside the fifth chunk's second bar
    bar = int(np.searchsorted(h1, m1_ts[m], side="right")) - 1
    back, ahead = halo(resolve(list(DEFAULT_LABELS), None))
    expected = halo_reaches(h1, before, back, ahead, lambda lo, hi: lo <= bar < hi)
    assert 1 <= len(expected) < len(before)
    # A new high of its bar (a corrected close inside a bar is no bar's close).
    service.store.command(f"ALTER TABLE {service.store.db}.raw UPDATE h = h + 0.5 WHERE "
                          f"toUnixTimestamp(time) = {int(m1_ts[m]) // 1000} SETTINGS mutations_sync = 2")
    plans = service.plan_update(source="raw", chunk_size=40, workers=2)
    assert [p["stale_chunks"] for p in plans] == [len(expected)] and plans[0]["new_chunks"] == 0
    for p in plans:
        assert service.execute(p["job_id"]).status == "completed"
    after = recs()
    assert {r for r, at in before.items() if after[r] != at} == expected
    assert service.plan_update(source="raw", chunk_size=40, workers=2) == []
    assert bars_tables(service) == []
