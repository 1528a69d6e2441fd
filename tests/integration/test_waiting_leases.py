"""Chunks that wait in Dask's queue keep their leases (real chDB, Redis, Dask).

A job asks for more workers than its cluster has threads: its driver
submits three tasks to a one-thread cluster, and the first chunk to run
takes three lease periods, so the others wait in Dask's queue (or behind
it in their task) far longer than a lease lives.  The driver renews the
leases of the chunks it submitted that have not started; once a chunk
starts, only its own heartbeat does (the chunks of a task that shares its
read start with its first, whose heartbeat keeps them).  No chunk may be
claimed twice.
"""

from __future__ import annotations

import threading
import time

import dask
import pandas as pd
import pytest
from conftest import make_settings, random_walk
from distributed import LocalCluster
from test_faults import assert_survived, ingest

import gpubackfill.engine.chunk as chunk_mod
from gpubackfill import compute_labels
from gpubackfill.engine.cluster import PROFILER_SETTING, TICK, TICK_SETTING
from gpubackfill.engine.driver import most_per_task
from gpubackfill.service import BackfillService

pytestmark = pytest.mark.integration

LEASE_SECONDS = 2
START, END = "2024-01-01", "2024-02-01"
CHUNK = 500


@pytest.fixture
def one_thread():
    """An in-process Dask cluster with a single worker thread."""
    with dask.config.set({PROFILER_SETTING: False, TICK_SETTING: TICK}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def _first_chunk_slow(monkeypatch, seconds: float) -> list[int]:
    """The first chunk to run waits ``seconds`` before it computes (its
    heartbeat keeps its own lease meanwhile); the others run as they are.
    The kernels are compiled first, so that the other chunks are quick."""
    compute_labels(pd.DataFrame(random_walk(300)), ["mfe_mae"])
    real = chunk_mod._compute_and_write
    slowed: list[int] = []
    lock = threading.Lock()

    def compute_and_write(store, task, fence=lambda: None):
        with lock:
            first = not slowed
            if first:
                slowed.append(task.index)
        if first:
            time.sleep(seconds)
        return real(store, task, fence)

    monkeypatch.setattr(chunk_mod, "_compute_and_write", compute_and_write)
    return slowed


@pytest.mark.parametrize("per_task", [1, 2], ids=["a-chunk-a-task", "two-chunks-a-task"])
def test_chunks_waiting_in_the_dask_queue_are_claimed_once(chdb_home, redis_socket, monkeypatch,
                                                          one_thread, per_task):
    svc = BackfillService(make_settings(chdb_home, redis_socket,
                                        GPUBACKFILL_RETRY_BASE_SECONDS="0.02",
                                        GPUBACKFILL_LEASE_SECONDS=str(LEASE_SECONDS),
                                        GPUBACKFILL_TASK_CANDLES=str(CHUNK * per_task)))
    candles = ingest(svc, start=START, end=END)
    slowed = _first_chunk_slow(monkeypatch, 3 * LEASE_SECONDS)
    job = svc.create_job("EURUSD", "M5", START, END, labels=["mfe_mae"], chunk_size=CHUNK, workers=3)
    total = svc.job(job).model_dump()["chunks_total"]
    assert total >= 3 * per_task + 1  # more chunks wait than the one thread runs
    # Tasks of per_task chunks (GPUBACKFILL_TASK_CANDLES): the job is long
    # enough that half a worker's share (driver.most_per_task) does not cut them.
    assert most_per_task(total, 3) >= per_task

    assert svc.execute(job, scheduler=one_thread).status == "completed"
    assert len(slowed) == 1
    assert_survived(svc, job, candles)
    # One lease token is handed out per claim: one claim per chunk.
    claims = int(svc.state.client.hget(svc.state.key(job), "lease_seq"))
    assert claims == total
    events = [e["event"] for e in svc.state.events(job)]
    assert "lease_expired" not in events
    assert svc.job(job).model_dump()["errors"] == 0


def test_two_jobs_sharing_a_cluster_claim_each_chunk_once(chdb_home, redis_socket, monkeypatch, one_thread):
    svc = BackfillService(make_settings(chdb_home, redis_socket,
                                        GPUBACKFILL_RETRY_BASE_SECONDS="0.02",
                                        GPUBACKFILL_LEASE_SECONDS=str(LEASE_SECONDS),
                                        GPUBACKFILL_TASK_CANDLES=str(CHUNK)))
    candles = {inst: ingest(svc, inst, start=START, end=END) for inst in ("EURUSD", "GBPUSD")}
    slowed = _first_chunk_slow(monkeypatch, 3 * LEASE_SECONDS)
    jobs = {inst: svc.create_job(inst, "M5", START, END, labels=["mfe_mae"], chunk_size=CHUNK, workers=2)
            for inst in candles}
    out: dict[str, str] = {}
    threads = [threading.Thread(target=lambda j=j: out.setdefault(j, svc.execute(j, scheduler=one_thread).status))
               for j in jobs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {j: "completed" for j in jobs.values()}
    assert len(slowed) == 1
    for inst, job in jobs.items():
        assert_survived(svc, job, candles[inst])
        total = svc.job(job).model_dump()["chunks_total"]
        assert int(svc.state.client.hget(svc.state.key(job), "lease_seq")) == total
