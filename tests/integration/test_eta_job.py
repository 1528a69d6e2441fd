"""The ETA of a real job: the driver, Redis and chDB (the estimator alone is
in tests/unit/test_eta.py)."""

from __future__ import annotations

import pytest


def test_a_real_job_reports_its_eta_from_recorded_samples(service):
    """Through the real driver, Redis and chDB: every finished task leaves a
    timed sample, and a status taken while work is left shows the
    estimator's ETA with its interval.  (How confident it is depends on this
    machine's timings: that is checked on recorded samples in
    tests/unit/test_eta.py.)

    Deterministic by construction: one worker, so the driver keeps at most
    two tasks in flight (``JobMachine``: 2 x workers) and claims more only
    after it has reported progress; with six tasks, the report that follows
    the second task's collection always has tasks left that were not even
    submitted."""
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.jobs.eta import estimate as est_fn
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import SeriesKey

    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-31"))
    # Tasks of 8 chunks (800 candles), so the job has many tasks.
    service = BackfillService(service.settings.model_copy(update={"task_candles": 800}))
    job = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-24", chunk_size=100, workers=1,
                             labels=["mfe_mae"])
    seen: list = []

    def progress(s):
        if not seen and (s["eta"] or {}).get("chunks_seen", 0) >= 2:
            seen.append(s)

    service.execute(job, progress=progress)
    samples = service.telemetry.samples(job)
    final = service.job(job).model_dump()
    # Chunks of 100 candles, 8 to a Dask task sharing one read and one
    # insert: one sample per task, its time and its candles.
    sizes = [n for _, _, n in samples]
    assert final["chunks_total"] == -(-final["candles_total"] // 100) and len(samples) >= 6
    assert sizes[:-1] == [800] * (len(sizes) - 1) and sum(sizes) == final["candles_total"]
    assert all(d > 0 for _, d, _ in samples)
    assert all(b[0] >= a[0] for a, b in zip(samples, samples[1:]))  # in finishing order
    assert seen, "no progress report after the second task"
    s = seen[0]
    e = s["eta"]
    assert s["status"] == "running" and s["candles_done"] < s["candles_total"]
    assert s["eta_s"] > 0 and 2 <= e["chunks_seen"] <= 3
    assert e["low_s"] <= s["eta_s"] <= e["high_s"] and 0 <= e["confidence"] <= 1
    assert e["concurrency"] == 1
    again = est_fn(samples[:e["chunks_seen"]], s["candles_total"] - s["candles_done"], 1)
    assert again.eta_s == pytest.approx(s["eta_s"])
    assert final["eta_s"] == 0.0 and final["status"] == "completed"


def test_chunks_that_read_and_write_on_their_own_are_one_sample_each(service):
    """Recomputed (--force), chunks are not a first backfill: each reads and
    writes its own rows, so each is its own sample even when Dask runs
    several in one task."""
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.storage.clickhouse_store import SeriesKey

    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-10"))
    first = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-08", chunk_size=100, workers=2,
                               labels=["mfe_mae"])
    service.execute(first)
    again = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-08", chunk_size=100, workers=2,
                               labels=["mfe_mae"], force=True)
    service.execute(again)
    samples = service.telemetry.samples(again)
    assert sorted(n for _, _, n in samples) == [28] + [100] * 17
    assert service.job(again).model_dump()["status"] == "completed"
