"""Small consecutive chunks of a first backfill share one read, one kernel
run and one insert (``engine/shared_io.py``), and stay exactly once when
that insert fails."""

from __future__ import annotations

import pytest
from test_faults import FAST, assert_survived, ingest

import gpubackfill.engine.chunk as chunk_mod
import gpubackfill.engine.shared_io as shared_io_mod
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import Store
from gpubackfill.storage.redis import RedisState

pytestmark = pytest.mark.integration


def _count_calls(monkeypatch, cls, name):
    calls = []
    real = getattr(cls, name)

    def counting(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counting)
    return calls


def test_a_task_of_small_chunks_reads_computes_and_inserts_once(settings, monkeypatch):
    svc = BackfillService(settings)
    candles = ingest(svc)
    loads = _count_calls(monkeypatch, Store, "load")
    inserts = _count_calls(monkeypatch, Store, "write_labels")
    computed = []
    real_compute = chunk_mod.compute_series

    def compute_series(series, *args, **kwargs):
        computed.append(len(series.ts))
        return real_compute(series, *args, **kwargs)

    monkeypatch.setattr(chunk_mod, "compute_series", compute_series)
    # One worker: the driver packs a task with up to half the job's chunks
    # (every worker gets two tasks), so seven chunks go three to a task.
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-02-01", chunk_size=1000, workers=1)
    assert svc.execute(job).status == "completed"
    chunks = svc.job(job).model_dump()["chunks_total"]
    assert chunks > 2
    # Tasks of several chunks: each task one read and one insert of all its rows.
    assert len(inserts) == len(loads) < chunks
    assert sorted(len(args[4]) for args in inserts)[-1] > 1000  # rows of several chunks at once
    # ... and one kernel run over that read: the labels of several chunks at once.
    assert len(computed) == len(loads) and max(computed) > 2000
    assert_survived(svc, job, candles)  # the same labels as the whole series computed at once


def test_a_failed_shared_insert_runs_its_chunks_again_one_by_one(settings, monkeypatch):
    """The shared insert lands and then reports a failure: its chunks run
    again on their own, replacing those rows instead of adding to them."""
    svc = BackfillService(settings.model_copy(update={"retry_base_seconds": 0.01}))
    candles = ingest(svc)
    real = shared_io_mod.SharedIO.insert
    failed = []

    def lands_then_fails(self, starts):
        real(self, starts)
        if not failed:
            failed.append(list(starts))
            raise ConnectionError("connection reset after the insert")

    monkeypatch.setattr(shared_io_mod.SharedIO, "insert", lands_then_fails)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-02-01", chunk_size=1000, workers=1)
    assert svc.execute(job).status == "completed"
    assert len(failed) == 1 and len(failed[0]) > 1
    assert_survived(svc, job, candles)  # count() = uniqExact: nothing twice


def test_a_chunk_whose_lease_was_lost_stays_out_of_the_shared_insert(chdb_home, redis_socket, monkeypatch):
    """Its rows are left out of the insert, and it runs again once its lease
    runs out (with shared I/O the write fence is called only before the
    shared insert)."""
    from conftest import make_settings

    svc = BackfillService(make_settings(chdb_home, redis_socket, **FAST))
    candles = ingest(svc)
    real = RedisState.fence_writes
    lost = []

    def fence_writes(self, job_id, chunks, lease_ms):
        got = real(self, job_id, chunks, lease_ms)
        if not lost and any(idx == 2 for idx, _ in chunks):
            lost.append(2)
            return [0 if idx == 2 else g for (idx, _), g in zip(chunks, got)]
        return got

    monkeypatch.setattr(RedisState, "fence_writes", fence_writes)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-02-01", chunk_size=1000, workers=1)
    assert svc.execute(job).status == "completed"
    assert lost == [2]
    assert_survived(svc, job, candles)


def test_execute_waits_out_a_redis_outage_that_starts_as_the_job_settles(settings, monkeypatch):
    """A job can settle just before Redis goes away: ``execute`` then waits
    for Redis to read the final record, as the driver does mid-job, instead
    of raising (a fault test that stops Redis mid-job hit this once a job's
    chunks were recorded a task at a time)."""
    from gpubackfill.errors import DependencyError

    svc = BackfillService(settings.model_copy(update={"retry_base_seconds": 0.01}))
    candles = ingest(svc)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-02-01", chunk_size=2000, workers=1)
    from gpubackfill.engine import launch

    real_drive, real_job = launch.drive, svc.state.job
    down = {"reads": 0}

    def drive(*args, **kwargs):
        status = real_drive(*args, **kwargs)
        down["reads"] = 3  # Redis refuses the next three reads
        return status

    def job_record(job_id):
        if down["reads"]:
            down["reads"] -= 1
            raise DependencyError("cannot reach Redis", "redis")
        return real_job(job_id)

    monkeypatch.setattr(launch, "drive", drive)
    monkeypatch.setattr(svc.state, "job", job_record)
    assert svc.execute(job).status == "completed"
    assert down["reads"] == 0
    monkeypatch.undo()
    assert_survived(svc, job, candles)
