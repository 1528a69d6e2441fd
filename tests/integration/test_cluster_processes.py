"""Two jobs at once on a cluster of Dask worker processes, as a deployment runs them.

Every part is its own process, as on a cluster of machines: the Dask
scheduler and two single-threaded worker processes (a ``LocalCluster``
that the engine reaches by ``DASK_SCHEDULER_ADDRESS``, as a user points it
at a scheduler), ClickHouse's HTTP interface (``chhttp``), and the bundled
redis-server.  The service's scheduler runs both jobs concurrently.  While
they run, one worker process is killed in the middle of a chunk, and Redis
is shut down and started again on its data.  Both jobs must end completed
with exactly the labels ``compute_labels`` gives on the whole series, once.
"""

from __future__ import annotations

import os
import re
import time

import dask
import psutil
import pytest
from conftest import make_settings
from test_faults import FAST, assert_survived, wait_for

from gpubackfill.candles.synthetic import generate
from gpubackfill.engine.cluster import PROFILER_SETTING, TICK, TICK_SETTING
from gpubackfill.jobs.machine import FINAL_JOB_STATES
from gpubackfill.serve.scheduler import Scheduler
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey
from gpubackfill.storage.redis_server import ensure_server, server_pid, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.integration]

SERIES = [("EURUSD", "M5"), ("GBPUSD", "M5")]
START, END = "2023-09-01", "2024-03-01"
CHUNK = 1_000
# One chunk per Dask task (``Settings.task_candles``), so that the task a
# worker runs names the chunk it computes.
TASK_CANDLES = str(CHUNK)
# A task key: chunk-JOB-INDEX-TOKEN, "+N" when the task runs N more chunks.
_KEY = re.compile(r"^chunk-([0-9a-f]+)-(\d+)-(\d+)$")




@pytest.fixture
def process_cluster():
    from distributed import Client, LocalCluster

    # The engine's own clusters run with Dask's profiler off and one tick a
    # second (engine/cluster.py); an external cluster is configured by its
    # operator, here the same way.
    with dask.config.set({PROFILER_SETTING: False, TICK_SETTING: TICK}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield cluster, client


def _executing(dask_worker) -> list[str]:
    return [str(ts.key) for ts in dask_worker.state.executing]


def kill_a_worker_mid_chunk(svc: BackfillService, client, jobs: list[str], timeout: float = 120
                            ) -> tuple[psutil.Process, str, int]:
    """SIGKILL a worker process while it computes a chunk; (the process, its job, the chunk).

    A worker seen executing a chunk's task is stopped (SIGSTOP) first, then
    Redis is asked whether that chunk is still leased under the task's
    token and not done: then the process is inside that chunk, and it is
    killed without having run another instruction.  Otherwise it resumes
    and the search goes on."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "no worker caught inside a chunk"
        pids = client.run(os.getpid)
        for address, keys in client.run(_executing).items():
            for key in keys:
                m = _KEY.match(key)
                if not m or m.group(1) not in jobs:
                    continue
                job, idx, token = m.group(1), int(m.group(2)), int(m.group(3))
                if address not in pids:
                    continue
                proc = psutil.Process(pids[address])
                proc.suspend()
                if svc.state.leases(job).get(idx) == token and svc.state.chunk_states(job).get(idx) != "done":
                    proc.kill()
                    proc.wait(30)
                    return proc, job, idx
                proc.resume()
        time.sleep(0.02)


def restart_redis_mid_job(svc: BackfillService, redis_dir, workers: list[psutil.Process],
                          jobs: list[str]) -> None:
    """Shut Redis down (saving) and start it again on the same data while
    both jobs have chunks left: the worker processes are held still while
    that is checked and Redis goes down, so no chunk settles in between."""
    for w in workers:
        w.suspend()
    try:
        left = {j: svc.job(j).model_dump() for j in jobs}
        assert all(s["status"] == "running" and s["chunks"]["done"] < s["chunks_total"]
                   for s in left.values()), left
        old = server_pid(redis_dir)
        stop_server(redis_dir)
        wait_for(lambda: old is None or not psutil.pid_exists(old), timeout=30, what="Redis to exit")
    finally:
        for w in workers:
            w.resume()
    time.sleep(1.0)  # the workers and drivers meet the outage
    ensure_server(redis_dir)
    assert server_pid(redis_dir) not in (None, old)


def test_two_jobs_on_worker_processes_survive_a_killed_worker_and_a_redis_restart(
        chhttp_server, own_redis, process_cluster, tmp_path):
    redis_dir, sock = own_redis
    cluster, client = process_cluster
    settings = make_settings(tmp_path / "home", sock, CLICKHOUSE_URL=chhttp_server.url,
                             DASK_SCHEDULER_ADDRESS=cluster.scheduler_address,
                             GPUBACKFILL_BREAKER_REDIS_RESET_SECONDS="0.5",
                             **{**FAST, "GPUBACKFILL_TASK_CANDLES": TASK_CANDLES})
    assert not settings.embedded_clickhouse
    # Nothing of the store or the workers lives in this process.
    assert chhttp_server.process.pid != os.getpid()
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids

    svc = BackfillService(settings)
    candles = {}
    for inst, gran in SERIES:
        candles[inst] = generate(inst, gran, START, "2024-03-10")
        svc.ingest_table(SeriesKey(inst, gran), candles[inst])
    jobs = [svc.create_job(inst, gran, START, END, chunk_size=CHUNK, workers=2) for inst, gran in SERIES]
    assert all(svc.job(j).model_dump()["chunks_total"] >= 30 for j in jobs)

    sched = Scheduler(svc, max_jobs=2, interval=0.05)
    sched.start()
    try:
        wait_for(lambda: sorted(sched.running()) == sorted(jobs), timeout=60, what="both jobs started")
        # Both jobs on the cluster, each with chunks done.
        wait_for(lambda: all(svc.job(j).model_dump()["chunks"]["done"] >= 1 for j in jobs), timeout=120,
                 what="a chunk of each job")
        restart_redis_mid_job(svc, redis_dir, [psutil.Process(p) for p in worker_pids], jobs)
        victim, victim_job, victim_chunk = kill_a_worker_mid_chunk(svc, client, jobs)
        assert victim.pid in worker_pids and not victim.is_running()
        # The cluster's nanny starts a new worker process in its place.
        wait_for(lambda: len(set(client.run(os.getpid).values()) - {victim.pid}) == 2, timeout=120,
                 what="a new worker process")
        wait_for(lambda: not sched.running()
                 and all(svc.state.job(j)["status"] in FINAL_JOB_STATES for j in jobs),
                 timeout=240, what="both jobs to settle")
    finally:
        sched.shutdown()
    for (inst, _), job in zip(SERIES, jobs):
        assert_survived(svc, job, candles[inst])
    # The killed worker's chunk was done again, elsewhere.
    assert svc.state.chunk_states(victim_job)[victim_chunk] == "done"
    assert all(svc.job(j).model_dump()["cluster"] == f"scheduler {cluster.scheduler_address}" for j in jobs)
