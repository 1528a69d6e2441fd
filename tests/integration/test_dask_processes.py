"""A job on Dask worker processes against a ClickHouse server protocol.

No ClickHouse server binary can be installed here, so ``chhttp`` serves
ClickHouse's HTTP interface from chDB in a separate process; every worker
process opens its own clickhouse-connect HTTP client to it, exactly as it
would to a real server.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import make_settings
from test_engine import assert_matches_whole_series

from gpubackfill.candles.synthetic import generate
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey

pytestmark = pytest.mark.integration


def test_one_store_serves_threads_at_once_over_http(chhttp_server, tmp_path, redis_socket):
    """The serve scheduler drives its jobs from threads of one process, and
    the API answers from others, all through one client of the server: a
    query must not be refused because another thread's is running."""
    from gpubackfill.storage.clickhouse_store import Store

    store = Store(make_settings(tmp_path / "home", redis_socket, CLICKHOUSE_URL=chhttp_server.url))
    barrier = threading.Barrier(4)

    def query(n: int) -> int:
        barrier.wait()
        return sum(store.rows("SELECT sum(number) FROM numbers({n:UInt64})", {"n": 200_000 + n})[0])

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(query, range(4)))
    assert got == [sum(range(200_000 + n)) for n in range(4)]


def test_job_on_worker_processes_through_the_http_interface(chhttp_server, tmp_path, redis_socket):
    settings = make_settings(tmp_path / "home", redis_socket, CLICKHOUSE_URL=chhttp_server.url)
    assert not settings.embedded_clickhouse
    svc = BackfillService(settings)
    candles = generate("EURUSD", "M5", "2024-01-01", "2024-02-10")
    svc.ingest_table(SeriesKey("EURUSD", "M5"), candles)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", chunk_size=1_500,
                         workers=2, min_workers=1)
    result = svc.execute(job)
    s = svc.job(job).model_dump()
    assert result.status == "completed", s["last_errors"]
    assert s["cluster"].startswith("local processes")
    assert_matches_whole_series(svc, job, candles)


def test_job_on_an_existing_dask_cluster_by_scheduler_address(chhttp_server, tmp_path, redis_socket):
    from distributed import LocalCluster

    settings = make_settings(tmp_path / "home", redis_socket, CLICKHOUSE_URL=chhttp_server.url)
    svc = BackfillService(settings)
    candles = generate("GBPUSD", "H1", "2023-01-01", "2024-01-10")
    svc.ingest_table(SeriesKey("GBPUSD", "H1"), candles)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        job = svc.create_job("GBPUSD", "H1", "2023-01-01", "2023-12-31", chunk_size=700, workers=2)
        result = svc.execute(job, scheduler=cluster.scheduler_address)
    s = svc.job(job).model_dump()
    assert result.status == "completed", s["last_errors"]
    assert s["cluster"] == f"scheduler {cluster.scheduler_address}"
    assert_matches_whole_series(svc, job, candles)
