"""Small chunks run several to a Dask task (``engine/chunk.py``'s ``run_chunks``), each still
leased, fenced and recorded on its own; against real chDB and redis-server."""

from __future__ import annotations

import pytest
from test_engine import END, START, assert_matches_whole_series, series
from test_write_path import _start

from gpubackfill.engine import chunk as chunk_mod
from gpubackfill.engine import driver as driver_mod
from gpubackfill.engine.chunk import run_chunks
from gpubackfill.engine.task import ChunkTask
from gpubackfill.jobs.result import ChunkResult
from gpubackfill.jobs.spec import JobSpec
from gpubackfill.service import BackfillService

SIZES: list[int] = []  # chunks per Dask task, as the driver submitted them


def _counting_submit(monkeypatch):
    SIZES.clear()
    real = driver_mod.run_chunks

    def counted(settings, tasks):
        return real(settings, tasks)

    from distributed import Client

    submit = Client.submit

    def recording(self, fn, *args, **kwargs):
        if fn is counted:
            SIZES.append(len(args[1]))
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(driver_mod, "run_chunks", counted)
    monkeypatch.setattr(Client, "submit", recording)


# (task_candles, workers): 500-candle chunks go about task_candles / 500 to a
# task, at most 64, and few enough that each worker gets two tasks.
@pytest.mark.parametrize("task_candles,workers", [(50_000, 2), (1, 2), (1_000, 2), (2_500, 1)])
def test_small_chunks_share_a_task_and_every_chunk_is_written_once(service, monkeypatch,
                                                                   task_candles, workers):
    candles = series(service)
    svc = BackfillService(service.settings.model_copy(update={"task_candles": task_candles}))
    job = svc.create_job("EURUSD", "M5", START, END, chunk_size=500, workers=workers)
    total = svc.job(job).model_dump()["chunks_total"]
    most = max(1, min(-(-task_candles // 500), 64, total // (2 * workers)))
    _counting_submit(monkeypatch)
    assert svc.execute(job).status == "completed"
    s = svc.job(job).model_dump()
    # Each chunk ran in exactly one task: none failed, none was given back.
    assert sum(SIZES) == total and s["chunks"]["done"] == total
    assert max(SIZES) == most and len(SIZES) == -(-total // most) and total > 8
    # Every worker had work: at least two tasks each.
    assert len(SIZES) >= 2 * workers
    assert s["rows_written"] == s["candles_total"]
    assert_matches_whole_series(svc, job, candles)


def _claimed(service, job, n):
    rec = service.state.job(job)
    out = []
    for _ in range(n):
        idx, token, segs = service.state.claim(job, "w", 60_000)
        out.append(ChunkTask(job_id=job, index=idx, token=token, segments=segs,
                             names={0: ("EURUSD", "M5")}, resolved=JobSpec.from_record(rec).resolved,
                             label_set=rec["label_set"], force=False, backend="cpu", max_attempts=3))
    return tuple(out)


def _rows_in(service, job, task):
    seg = task.segments[0]
    label_set = service.state.job(job)["label_set"]
    return service.store.rows(
        f"SELECT count() FROM {service.store.db}.labels_{label_set} "
        f"WHERE ts >= fromUnixTimestamp64Milli({seg.start_ms}, 'UTC') "
        f"AND ts < fromUnixTimestamp64Milli({seg.end_ms}, 'UTC')")[0][0]


def test_a_chunk_whose_lease_was_taken_back_while_it_waited_is_not_run(service):
    candles = series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=1)
    _start(service, job)
    tasks = _claimed(service, job, 3)
    service.state.release(job, tasks[1].index, tasks[1].token)  # taken back meanwhile
    results = run_chunks(service.settings, tasks)
    assert [r.kind for r in results] == ["done", "stale", "stale"]
    assert "lease was taken back" in results[1].error and "not started" in results[2].error
    assert _rows_in(service, job, tasks[0]) == tasks[0].rows
    assert _rows_in(service, job, tasks[1]) == _rows_in(service, job, tasks[2]) == 0
    s = service.job(job).model_dump()
    # The third was given back with the second (no lease left over to run out).
    assert s["chunks"]["done"] == 1 and s["chunks"]["leased"] == 0
    assert s["chunks"]["pending"] == s["chunks_total"] - 1
    service.state.transition(job, "interrupt")
    assert service.execute(job).status == "completed"
    assert service.job(job).model_dump()["rows_written"] == service.job(job).model_dump()["candles_total"]
    assert_matches_whole_series(service, job, candles)


def test_a_pause_gives_back_the_chunks_waiting_in_a_task(service):
    candles = series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=1)
    _start(service, job)
    tasks = _claimed(service, job, 3)
    service.pause(job)
    results = run_chunks(service.settings, tasks)
    # The chunk that had started finishes; the two behind it do not start.
    assert [r.kind for r in results] == ["done", "stale", "stale"]
    assert "the job is paused" in results[1].error
    s = service.job(job).model_dump()
    assert s["status"] == "paused" and s["chunks"]["leased"] == 0 and s["chunks"]["done"] == 1
    service.resume(job)
    service.state.transition(job, "interrupt")
    assert service.execute(job).status == "completed"
    assert_matches_whole_series(service, job, candles)


def test_a_chunk_that_fails_sends_the_rest_of_its_task_back(service, monkeypatch):
    candles = series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=1)
    _start(service, job)
    tasks = _claimed(service, job, 3)
    real = chunk_mod.run_chunk

    def first_fails(settings, task, *shared_io):
        if task is tasks[0]:
            service.state.fail(job, task.index, task.token, "boom", 3, retryable=True)
            return ChunkResult(task.index, "retry", error="boom")
        return real(settings, task, *shared_io)

    monkeypatch.setattr(chunk_mod, "run_chunk", first_fails)
    results = run_chunks(service.settings, tasks)
    assert [r.kind for r in results] == ["retry", "stale", "stale"]
    assert f"chunk {tasks[0].index} ended retry" in results[1].error
    s = service.job(job).model_dump()
    assert s["chunks"]["leased"] == 0 and s["chunks"]["done"] == 0
    assert s["chunks"]["pending"] == s["chunks_total"]
    monkeypatch.undo()
    service.state.transition(job, "interrupt")
    assert service.execute(job).status == "completed"
    assert_matches_whole_series(service, job, candles)
