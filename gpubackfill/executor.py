"""Where chunks run: Dask, in one of three shapes.

- embedded store (chDB): an in-process cluster of threads, since chDB
  allows one engine per data folder per process (kernels release the GIL);
- ClickHouse server: a ``LocalCluster`` of worker processes, each opening
  its own connections;
- ``--scheduler`` / ``DASK_SCHEDULER_ADDRESS``: an existing cluster, which is
  how a backfill outgrows one machine.

Adaptive scaling between ``min_workers`` and ``workers`` is Dask's own.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator

from .config import Settings
from .errors import DependencyError


@dataclass
class Cluster:
    client: object
    kind: str
    dashboard: str | None


def _dashboard_address() -> str:
    # Any free port: several jobs (and tests) may run side by side.  Without
    # bokeh installed Dask serves no dashboard pages, and we show no link.
    return ":0"


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def open_cluster(settings: Settings, workers: int, min_workers: int | None = None,
                 scheduler: str | None = None) -> Iterator[Cluster]:
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    address = scheduler or settings.dask_scheduler
    if address:
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise DependencyError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        try:
            yield Cluster(client, f"scheduler {address}", client.dashboard_link)
        finally:
            client.close()
        return
    dash = _dashboard_address()
    if settings.embedded_clickhouse:
        cluster = LocalCluster(n_workers=1, threads_per_worker=workers, processes=False,
                               dashboard_address=dash)
        kind = f"in-process, {workers} threads"
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=dash)
        if min_workers is not None and min_workers < workers:
            cluster.adapt(minimum=min_workers, maximum=workers)
        kind = f"local processes, {min_workers or workers}..{workers} workers"
    client = Client(cluster)
    try:
        yield Cluster(client, kind, client.dashboard_link if _has_dashboard() else None)
    finally:
        client.close()
        cluster.close()
