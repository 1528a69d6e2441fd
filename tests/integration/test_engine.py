"""Backfill jobs end to end against real chDB and a real redis-server."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest
from compare import assert_label_columns, column

from gpubackfill import compute_labels
from gpubackfill.candles.synthetic import generate
from gpubackfill.errors import InvalidInput, InvalidTransition, JobNotFound
from gpubackfill.storage.clickhouse_store import SeriesKey

ALL = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]
START, END = "2024-01-01", "2024-01-31"


def series(service, instrument="EURUSD", granularity="M5", start=START, end="2024-02-15"):
    table = generate(instrument, granularity, start, end)
    service.ingest_table(SeriesKey(instrument, granularity), table)
    return table


def assert_matches_whole_series(service, job_id, candles: pa.Table):
    """The stored labels equal compute_labels over everything ingested."""
    s = service.job(job_id).model_dump()
    stored = service.export(s["instrument"], s["granularity"], s["labels"], None)
    whole = compute_labels(candles, s["labels"])
    ts = whole.column("ts").to_numpy()
    a = np.searchsorted(ts, stored.column("ts").to_numpy())
    assert stored.num_rows == s["candles_total"] > 0
    np.testing.assert_array_equal(ts[a], stored.column("ts").to_numpy())
    want = whole.take(pa.array(a))
    assert_label_columns(stored, want)
    key = SeriesKey(s["instrument"], s["granularity"])
    n, uniq = service.store.label_counts(key, s["label_set"])
    assert n == uniq == stored.num_rows  # no duplicates, without FINAL


def test_job_equals_whole_series_with_chunks_that_do_not_divide(service):
    candles = series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=997, workers=2)
    result = service.execute(job)
    assert result.status == "completed"
    s = service.job(job).model_dump()
    assert s["chunks_total"] > 5 and s["chunks"]["done"] == s["chunks_total"]
    assert s["candles_done"] == s["candles_total"] == s["rows_written"]
    assert_matches_whole_series(service, job, candles)


def test_rerun_skips_unchanged_chunks_and_force_recomputes_without_duplicates(service):
    candles = series(service)
    first = service.start("EURUSD", "M5", START, END, chunk_size=2_000, workers=2)
    chunks = service.job(first).model_dump()["chunks_total"]
    again = service.start("EURUSD", "M5", START, END, chunk_size=2_000, workers=2)
    s = service.job(again).model_dump()
    assert s["status"] == "completed" and s["cache_hits"] == chunks and s["rows_written"] == 0
    forced = service.start("EURUSD", "M5", START, END, chunk_size=2_000, workers=2, force=True)
    s = service.job(forced).model_dump()
    assert s["cache_hits"] == 0 and s["rows_written"] == s["candles_total"]
    assert_matches_whole_series(service, forced, candles)


def test_incomplete_rows_are_recomputed_when_newer_candles_arrive(service):
    full = generate("GBPUSD", "M5", START, "2024-02-15")
    ts = full.column("ts").to_numpy()
    cut = int(np.searchsorted(ts, np.datetime64("2024-01-31", "ms").astype(np.int64)))
    key = SeriesKey("GBPUSD", "M5")
    service.ingest_table(key, full.slice(0, cut))
    job = service.start("GBPUSD", "M5", START, END, chunk_size=2_000, workers=2)
    stored = service.export("GBPUSD", "M5", ALL, None)
    flags = column(stored, "tb_flags")
    assert flags[-1] == 4 and (flags == 4).sum() > 0  # windows cut by the end of the data
    # Each chunk's record counts its rows with a label NULL for lack of newer
    # candles (what `series` shows): a NULL in any label's columns within the
    # labels' 24-bar look-ahead of the end, not only the triple barrier's.
    recorded = service.store.rows(f"SELECT sum(incomplete) FROM {service.store.db}.label_chunks FINAL "
                                  f"WHERE instrument = 'GBPUSD' AND granularity = 'M5'")[0][0]
    tail = stored.slice(stored.num_rows - 24)
    nulls = np.zeros(tail.num_rows, dtype=bool)
    for name in tail.column_names:
        nulls |= tail.column(name).is_null().to_numpy(zero_copy_only=False)
    assert recorded == int(nulls.sum()) > int(np.count_nonzero(flags & 4))
    service.ingest_table(key, full)
    again = service.start("GBPUSD", "M5", START, END, chunk_size=2_000, workers=2)
    s = service.job(again).model_dump()
    assert 0 < s["rows_written"] < s["candles_total"]  # only chunks that saw new candles
    assert_matches_whole_series(service, again, full)
    assert job != again


def test_two_jobs_at_once(service):
    a = series(service, "EURUSD")
    b = series(service, "USDJPY")
    jobs = [service.create_job(i, "M5", START, END, chunk_size=1_500, workers=2)
            for i in ("EURUSD", "USDJPY")]
    threads = [threading.Thread(target=service.execute, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for job, candles in zip(jobs, (a, b)):
        assert service.job(job).model_dump()["status"] == "completed"
        assert_matches_whole_series(service, job, candles)


def test_one_driver_per_job(service):
    series(service)
    job = service.create_job("EURUSD", "M5", START, END)
    assert service.state.acquire_driver(job, "someone-else", 60_000) is None
    with pytest.raises(InvalidTransition, match="already being run by someone-else"):
        service.execute(job)


def test_bad_requests_are_refused_before_anything_runs(service):
    series(service)
    with pytest.raises(InvalidInput, match="no candles for XAUUSD M5"):
        service.create_job("XAUUSD", "M5", START, END)
    with pytest.raises(InvalidInput, match="invalid instrument"):
        service.create_job("EURUSD'; DROP TABLE candles; --", "M5", START, END)
    with pytest.raises(InvalidInput, match="bad start date"):
        service.create_job("EURUSD", "M5", "2024-13-01", END)
    with pytest.raises(InvalidInput, match="not after"):
        service.create_job("EURUSD", "M5", END, START)
    with pytest.raises(InvalidInput, match="unknown label"):
        service.create_job("EURUSD", "M5", START, END, labels=["nope"])
    with pytest.raises(InvalidInput, match="horizon must be >= 1"):
        service.create_job("EURUSD", "M5", START, END, params={"mfe_mae": {"horizon": "0"}})
    with pytest.raises(InvalidInput, match="granularity"):
        service.create_job("EURUSD", "M7", START, END)
    with pytest.raises(JobNotFound):
        service.pause("0123456789ab")
    assert service.jobs() == []


def test_a_range_without_candles_is_refused_naming_the_series_range(service):
    series(service)
    with pytest.raises(InvalidInput, match=r"no EURUSD M5 candles from 2023-01-01 to 2023-01-31; "
                                           r"the series has 2024-01-01T00:00:00Z to 2024-02-1"):
        service.start("EURUSD", "M5", "2023-01-01", "2023-01-31")
    assert service.jobs() == []


def test_cleanup_forgets_old_finished_jobs_only(service):
    series(service)
    done = service.start("EURUSD", "M5", START, "2024-01-05", chunk_size=5_000)
    queued = service.create_job("EURUSD", "M5", START, "2024-01-05")
    assert service.cleanup(1) == []              # finished less than a day ago
    assert service.cleanup(0, status="cancelled") == []
    assert service.cleanup(0) == [done]
    assert [j.job_id for j in service.jobs()] == [queued]


def test_status_says_which_backend_ran_and_why(service):
    candles = series(service)
    job = service.start("EURUSD", "M5", START, "2024-01-10", chunk_size=3_000, backend="auto")
    s = service.job(job).model_dump()
    assert s["backend"] == "auto" and s["backend_used"] == "cpu"
    assert s["backend_reason"].startswith("auto chose cpu: ")
    assert any(e["event"] == "backend" for e in service.state.events(job))
    assert s["status"] == "completed" and candles.num_rows > s["candles_total"] > 0


def test_finished_jobs_expire_after_the_redis_ttl(service):
    series(service)
    job = service.start("EURUSD", "M5", START, "2024-01-05", chunk_size=5_000)
    ttl = service.state.client.ttl(service.state.key(job))
    assert 0 < ttl <= service.settings.redis_ttl
    queued = service.create_job("EURUSD", "M5", START, "2024-01-05")
    assert service.state.client.ttl(service.state.key(queued)) == -1  # unfinished jobs stay


def test_status_shows_where_the_time_of_the_chunks_went(service):
    series(service)
    job = service.start("EURUSD", "M5", START, END, chunk_size=1_500, workers=1)
    s = service.job(job).model_dump()
    stages = s["stages"]
    assert {"load", "fingerprint", "validate", "compute", "write", "total"} <= set(stages)
    # A first backfill's chunks are fresh: no rows, so nothing to look up.
    assert "cache check" not in stages
    again = service.job(service.start("EURUSD", "M5", START, END, chunk_size=1_500, workers=1)).model_dump()
    assert "cache check" in again["stages"] and again["cache_hits"] == again["chunks_total"]
    # The chunk's own steps; its record in Redis comes after its total.
    steps = sum(v for k, v in stages.items() if k not in ("total", "record"))
    assert 0 < steps <= stages["total"] * 1.001
    # The recorded total is the sum of the chunks' durations the ETA uses.
    recorded = sum(d for d, _ in service.state.durations(job))
    assert stages["total"] == pytest.approx(recorded, rel=1e-3, abs=1e-3)


def test_status_shows_the_time_spent_recording_chunks_in_redis(service):
    """A job's time budget has its records too: each chunk's Redis
    completion is timed and carried by the next chunk's result."""
    series(service)
    job = service.start("EURUSD", "M5", START, END, chunk_size=1_500, workers=1)
    s = service.job(job).model_dump()
    assert s["chunks_total"] > 2
    assert 0 < s["stages"]["record"] < s["stages"]["total"]


def test_a_jobs_labels_are_resolved_once_from_request_to_settled(service, monkeypatch):
    """The request's labels are resolved when the job is made; the driver,
    planning, queueing and every chunk use them as stored (the count does
    not grow with the chunks: 7 here)."""
    from gpubackfill.labels import DEFAULT_LABELS, LabelSpec

    candles = series(service)
    calls: list[str] = []
    real = LabelSpec.resolve
    monkeypatch.setattr(LabelSpec, "resolve", lambda self, given: calls.append(self.name) or real(self, given))
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=1_000, workers=1)
    assert service.execute(job).status == "completed"
    assert service.job(job).chunks_total >= 6
    assert sorted(calls) == sorted(DEFAULT_LABELS)
    assert_matches_whole_series(service, job, candles)
