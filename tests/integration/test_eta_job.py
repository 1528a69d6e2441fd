"""The ETA of a real job: the driver, Redis and chDB (the estimator alone is
in tests/unit/test_eta.py)."""

from __future__ import annotations

import pytest


def test_a_real_job_reports_its_eta_from_recorded_chunks(service):
    """Through the real driver, Redis and chDB: every finished chunk leaves a
    timed sample, and the status half-way shows the estimator's ETA with its
    interval.  (Convergence itself is checked above on chunks of known
    duration: real chunk times on a shared CI machine are not steady.)"""
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.eta import estimate as est_fn
    from gpubackfill.storage.clickhouse_store import SeriesKey

    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-10"))
    job = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-08", chunk_size=100, workers=2,
                             labels=["mfe_mae"])
    half: list = []

    def progress(s):
        if not half and s["candles_done"] >= s["candles_total"] / 2:
            half.append(s)

    service.execute(job, progress=progress)
    samples = service.telemetry.samples(job)
    final = service.status(job)
    assert len(samples) == final["chunks_total"] and sum(n for _, _, n in samples) == final["candles_total"]
    assert all(b[0] >= a[0] for a, b in zip(samples, samples[1:]))  # in finishing order
    s = half[0]
    e = s["eta"]
    assert s["status"] == "running" and s["eta_s"] > 0 and 1 <= e["chunks_seen"] <= s["chunks"]["done"]
    assert e["low_s"] <= s["eta_s"] <= e["high_s"] and 0 < e["confidence"] <= 1
    assert 1 <= e["concurrency"] <= 2
    again = est_fn(samples[:e["chunks_seen"]], s["candles_total"] - s["candles_done"], 2)
    assert again.eta_s == pytest.approx(s["eta_s"])
    assert final["eta_s"] == 0.0 and final["status"] == "completed"
