"""Chunk deadlines, and Dask's profiler kept out of the clusters we start.

The integration tests block a chunk on purpose (an Event, released in a
``finally`` so that no thread outlives its test) on real chDB and Redis.
"""

from __future__ import annotations

import sys
import threading
import time

import pandas as pd
import pytest
from conftest import make_settings, random_walk
from test_faults import assert_survived, ingest, wait_for

import gpubackfill.engine.chunk as chunk_mod
from gpubackfill import compute_labels
from gpubackfill.engine import cluster as executor
from gpubackfill.engine.watchdog import chunk_deadline, thread_stack
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey

# Leases and deadlines of seconds, so that a take-back happens within a test.
QUICK = {"GPUBACKFILL_RETRY_BASE_SECONDS": "0.02", "GPUBACKFILL_LEASE_SECONDS": "2",
         "GPUBACKFILL_CHUNK_TIMEOUT": "2"}


# -- pure parts -------------------------------------------------------------


def test_deadline_is_fixed_or_ten_medians_with_a_floor():
    assert chunk_deadline(7.5, 300, [1.0, 2.0]) == 7.5
    assert chunk_deadline(0, 300, []) == 300
    assert chunk_deadline(0, 300, [1.0, 2.0, 60.0]) == 300  # 10 x median 2 s is under the floor
    assert chunk_deadline(0, 300, [40.0, 50.0, 60.0, 1.0]) == 450  # median 45 s


def test_thread_stack_names_the_blocked_function():
    release = threading.Event()

    def stuck_in_here():
        release.wait(30)

    t = threading.Thread(target=stuck_in_here)
    t.start()
    try:
        time.sleep(0.1)
        stack = thread_stack(t.ident)
    finally:
        release.set()
        t.join()
    assert "stuck_in_here" in stack
    assert f"0x{t.ident:016x}" in stack.splitlines()[0]
    assert "test_thread_stack_names_the_blocked_function" not in stack  # only that thread


@pytest.mark.parametrize("version, prone", [
    ((3, 11, 7), True), ((3, 11, 0), True), ((3, 11, 11), True),
    ((3, 11, 12), False), ((3, 11, 14), False), ((3, 12, 1), False), ((3, 13, 0), False),
])
def test_deadlock_prone_versions(version, prone):
    assert executor.deadlock_prone(version) is prone


@pytest.mark.integration
def test_clusters_started_here_time_their_event_loops_once_a_second(settings):
    """Dask's servers tick every 20 ms by default: CPU a job does not get."""
    with executor.open_cluster(settings, 1) as cluster:
        local = cluster.local
        servers = [local.scheduler, *local.workers.values()]
        assert [s.periodic_callbacks["tick"].callback_time for s in servers] == [1000] * len(servers)


@pytest.mark.integration
def test_an_existing_cluster_with_the_profiler_on_gets_one_warning(settings, caplog):
    import dask
    from distributed import LocalCluster

    # Someone else's cluster, profiler on (Dask's default).  Worker processes,
    # so that if this Python is affected a deadlock could only hit them.
    with dask.config.set({executor.PROFILER_SETTING: True}):
        other = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                             dashboard_address=":0")
    try:
        with caplog.at_level("WARNING", logger="gpubackfill"):
            with executor.open_cluster(settings, 1, scheduler=other.scheduler_address) as cluster:
                facts = list(cluster.client.run(executor._worker_facts).values())
        assert facts == [(tuple(sys.version_info[:3]), True)]  # ours did not change theirs
        lines = [r.getMessage() for r in caplog.records if "profiler" in r.getMessage()]
        if executor.deadlock_prone():
            [line] = lines
            assert sys.version.split()[0] in line and "gh-106883" in line and "3.11.12" in line
            assert "distributed.worker.profile.enabled: false" in line
        else:
            assert lines == []
    finally:
        other.close()


def test_the_clusters_we_start_run_no_profiler(settings):
    with executor.open_cluster(settings, 2) as cluster:
        workers = cluster.client.run(executor._worker_facts)
        assert workers and all(profiling is False for _, profiling in workers.values())
        # The worker has no periodic callback calling sys._current_frames().
        info = cluster.client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
        assert all("profile" not in names for names in info.values())


# -- a chunk that blocks on purpose -------------------------------------------


def _blocking(monkeypatch, release: threading.Event, block) -> list[int]:
    """Make chunks for which ``block(task, attempt)`` is true wait for ``release``.

    The kernel is compiled first: on a cold numba cache a compile alone can
    outlast these tests' 2 s deadline."""
    compute_labels(pd.DataFrame(random_walk(300)), ["mfe_mae"])
    real = chunk_mod._compute_and_write
    seen: dict[int, int] = {}
    blocked: list[int] = []
    lock = threading.Lock()

    def compute_and_write(store, task, fence=lambda: None):
        with lock:
            seen[task.index] = seen.get(task.index, 0) + 1
            attempt = seen[task.index]
        if block(task, attempt):
            blocked.append(task.index)
            release.wait(120)
        return real(store, task, fence)

    monkeypatch.setattr(chunk_mod, "_compute_and_write", compute_and_write)
    return blocked


def _label_counts(svc, job):
    s = svc.job(job).model_dump()
    return svc.store.label_counts(SeriesKey(s["instrument"], s["granularity"]), s["label_set"])


@pytest.mark.integration
def test_a_stuck_chunk_is_taken_back_and_the_job_completes(chdb_home, redis_socket, monkeypatch):
    svc = BackfillService(make_settings(chdb_home, redis_socket, **QUICK))
    candles = ingest(svc)
    release = threading.Event()
    blocked = _blocking(monkeypatch, release, lambda task, attempt: task.index == 1 and attempt == 1)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"],
                         chunk_size=1000, workers=2)
    try:
        assert svc.execute(job).status == "completed"
        assert blocked == [1]
        events = [e for e in svc.state.events(job) if e["event"] == "chunk_timeout"]
        assert len(events) == 1
        assert "chunk 1" in events[0]["note"] and "past its deadline of 2s" in events[0]["note"]
        # faulthandler's stack of the blocked thread: our wrapper, waiting.
        assert "in compute_and_write" in events[0]["note"] and "in wait" in events[0]["note"]
        assert svc.state.chunk_errors(job)[1].startswith("timeout: chunk 1")  # one attempt counted
        assert svc.job(job).model_dump()["errors"] == 1 and svc.dead_letters(job) == []
        assert_survived(svc, job, candles)
    finally:
        release.set()
    # The stuck run wakes up after its chunk was re-run: its write is fenced off.
    wait_for(lambda: svc.state.counters().get("errors:transient", 0) >= 1, what="the record")
    time.sleep(1.0)
    n, uniq = _label_counts(svc, job)
    assert n == uniq == svc.job(job).model_dump()["candles_total"]


@pytest.mark.integration
def test_a_chunk_stuck_on_every_attempt_is_dead_lettered(chdb_home, redis_socket, monkeypatch):
    svc = BackfillService(make_settings(chdb_home, redis_socket, BATCH_MAX_RETRIES="1", **QUICK))
    ingest(svc)
    release = threading.Event()
    blocked = _blocking(monkeypatch, release, lambda task, attempt: task.index == 2)
    # Three threads: two stuck attempts still leave one to run the rest.
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"],
                         chunk_size=1000, workers=3)
    try:
        assert svc.execute(job).status == "completed_with_errors"
        assert blocked == [2, 2]
        [entry] = svc.dead_letters(job)
        assert entry["chunk"] == 2 and entry["digest"] == "chunk-timeout"
        assert entry["attempts"] == 2 and entry["message"].startswith("timeout: chunk 2")
        s = svc.job(job).model_dump()
        assert s["chunks"]["done"] == s["chunks_total"] - 1
    finally:
        release.set()


@pytest.mark.integration
def test_a_cluster_whose_every_slot_is_stuck_interrupts_and_execute_finishes(
        chdb_home, redis_socket, monkeypatch):
    svc = BackfillService(make_settings(chdb_home, redis_socket, **QUICK))
    candles = ingest(svc)
    release = threading.Event()
    _blocking(monkeypatch, release, lambda task, attempt: task.index == 0 and attempt == 1)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"],
                         chunk_size=1000, workers=1)
    try:
        result = svc.execute(job)
        assert result.status == "interrupted"
        notes = [e["note"] for e in svc.state.events(job) if e["event"] == "interrupt"]
        assert any("worker slots are stuck (chunks 0" in n for n in notes)
        assert svc.job(job).model_dump()["interrupted_because"].startswith("all 1 worker slots are stuck")
    finally:
        release.set()
    assert svc.execute(job).status == "completed"
    assert_survived(svc, job, candles)
