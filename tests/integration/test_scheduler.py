"""The service's scheduler: the pure choice, priority order over real jobs,
and picking up work after a restart."""

from __future__ import annotations

import time

from gpubackfill.candles.synthetic import generate
from gpubackfill.jobs.machine import FINAL_JOB_STATES
from gpubackfill.serve.scheduler import Candidate, Scheduler, pick
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey

START, END = "2024-01-01", "2024-01-04"


def test_pick_orders_by_priority_then_age_within_free_slots():
    c = [Candidate("low1", "low", 1), Candidate("norm2", "normal", 2), Candidate("high3", "high", 3),
         Candidate("norm1", "normal", 1), Candidate("high4", "high", 4)]
    assert pick(c, running=0, limit=10) == ["high3", "high4", "norm1", "norm2", "low1"]
    assert pick(c, running=0, limit=2) == ["high3", "high4"]
    assert pick(c, running=1, limit=2) == ["high3"]
    assert pick(c, running=3, limit=2) == []
    assert pick([], running=0, limit=4) == []
    # same priority and time: the id decides, so the order is total
    assert pick([Candidate("b", "low", 5), Candidate("a", "low", 5)], 0, 1) == ["a"]


def run_until_settled(sched: Scheduler, jobs: list[str], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while True:
        sched.tick()
        states = [sched.service.state.job(j)["status"] for j in jobs]
        if all(s in FINAL_JOB_STATES for s in states) and not sched.running():
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.05)


def test_queued_jobs_run_by_priority_one_at_a_time(service):
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", START, "2024-01-08"))
    order = ["low", "normal", "high", "high", "normal"]
    # distinct ranges: identical jobs may be refused while one is active
    jobs = [service.create_job("EURUSD", "M5", START, f"2024-01-0{3 + i}", chunk_size=300, workers=1,
                               priority=p) for i, p in enumerate(order)]
    sched = Scheduler(service, max_jobs=1, interval=0.05)
    run_until_settled(sched, jobs)
    expected = [jobs[2], jobs[3], jobs[1], jobs[4], jobs[0]]
    assert sched.started_order == expected
    runs = [service.state.job(j) for j in expected]
    assert all(r["status"] == "completed" for r in runs)
    for a, b in zip(runs, runs[1:]):  # never two at once with max_jobs=1
        assert b["started"] >= a["finished"]


def test_a_new_scheduler_resumes_interrupted_and_queued_jobs(service):
    # Tasks of two chunks, so that the first job is still running when the
    # service stops after its first chunks.
    service = BackfillService(service.settings.model_copy(update={"task_candles": 120}))
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", START, "2024-01-08"))
    first = service.create_job("EURUSD", "M5", START, END, chunk_size=60, workers=1)
    old = Scheduler(service, max_jobs=1, interval=0.05)
    assert old.tick() == [first]
    deadline = time.monotonic() + 120
    while service.job(first).model_dump()["chunks"]["done"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    old.shutdown()  # the service stops: its job is interrupted between chunks
    s = service.job(first).model_dump()
    assert s["status"] == "interrupted" and s["chunks"]["done"] < s["chunks_total"]
    second = service.create_job("EURUSD", "M5", START, "2024-01-05", chunk_size=600, workers=1)
    manual = service.create_job("EURUSD", "M5", START, "2024-01-06", chunk_size=600, workers=1)
    service.pause(manual)  # paused by a user: not the scheduler's to start
    new = Scheduler(service, max_jobs=2, interval=0.05)
    run_until_settled(new, [first, second])
    assert sorted(new.started_order) == sorted([first, second])
    s = service.job(first).model_dump()
    assert s["status"] == "completed" and s["candles_done"] == s["candles_total"]
    assert service.job(manual).model_dump()["status"] == "paused"


def test_a_restarted_service_takes_over_a_job_whose_driver_died_at_once(service):
    """What kill -9 of a serve leaves: a running job, scheduled by the service,
    whose driver lock names a process of this host that no longer exists.  The
    next scheduler runs it now, as `execute` would, not after the lease."""
    import socket
    import subprocess
    import sys

    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", START, "2024-01-08"))
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=600, workers=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    owner = f"{socket.gethostname()}:{dead}:gone01"
    service.state.set_fields(job, scheduled="1")
    service.state.transition(job, "execute")
    assert service.state.acquire_driver(job, owner, 600_000) is None  # a 10-minute lease
    assert service.job(job).model_dump()["driver"]["gone"]
    new = Scheduler(service, max_jobs=1, interval=0.05)
    assert new.tick() == [job]
    run_until_settled(new, [job], seconds=120)
    s = service.job(job).model_dump()
    assert s["status"] == "completed" and s["candles_done"] == s["candles_total"]


def test_a_finished_job_whose_dead_letters_are_retried_runs_again(service):
    """``run_again`` (the console's and the API's retry): the scheduler
    picks the job up like a queued one and ``execute`` runs its re-queued
    chunks; a retry without it (``dlq retry --detach``) is left alone."""
    candles = generate("EURUSD", "M5", START, "2024-01-08")
    service.ingest_table(SeriesKey("EURUSD", "M5"), candles)
    row = candles.num_rows // 4
    ts, high = int(candles.column("ts")[row].as_py()), float(candles.column("high")[row].as_py())

    def set_high(value: float) -> None:
        service.store.command(
            f"ALTER TABLE {service.store.db}.candles UPDATE high = {value!r} WHERE instrument = 'EURUSD' "
            f"AND toUnixTimestamp64Milli(ts) = {ts} SETTINGS mutations_sync = 1")

    set_high(0.5)   # below low: the chunks reading it dead-letter
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=300, workers=1)
    sched = Scheduler(service, max_jobs=1, interval=0.05)
    run_until_settled(sched, [job])
    assert service.job(job).model_dump()["status"] == "completed_with_errors" and service.dead_letters(job)
    set_high(high)  # the fix
    assert service.retry_dead_letters(job_id=job)
    assert sched.tick() == []   # re-queued only: not the scheduler's to run
    assert sched.run_again(job)
    run_until_settled(sched, [job])
    s = service.job(job).model_dump()
    assert s["status"] == "completed" and s["candles_done"] == s["candles_total"]
    assert service.dead_letters(job) == [] and sched.started_order == [job, job]
    assert not sched.run_again(job)   # nothing failed: nothing to run again
