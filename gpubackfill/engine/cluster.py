"""Where chunks run: Dask, in one of three shapes.

- embedded store (chDB): an in-process cluster of threads, since chDB
  allows one engine per data folder per process (kernels release the GIL);
- ClickHouse server: a ``LocalCluster`` of worker processes, each opening
  its own connections;
- ``--scheduler`` / ``DASK_SCHEDULER_ADDRESS``: an existing cluster, which is
  how a backfill outgrows one machine.

Adaptive scaling between ``min_workers`` and ``workers`` is Dask's own.

Dask's sampling profiler is off in every cluster started here.  It calls
``sys._current_frames()`` every 10 ms in each worker, and on CPython 3.11
before 3.11.12 that call can deadlock the whole process (gh-106883: it
holds the runtime's thread-list lock while allocating, an allocation runs
the garbage collector, and freeing a ``threading.local`` takes the same lock
again).  ``tools/current_frames_deadlock.py`` shows it on a given Python.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..common.logs import log
from ..config import Settings
from ..errors import DependencyError

PROFILER_SETTING = "distributed.worker.profile.enabled"
# Dask's scheduler and workers wake every 20 ms to time their own event
# loop (for the "event loop was unresponsive" warning).  An in-process
# cluster then costs 2.6% of a core while idle and 3.4% while a 10M-candle
# job runs on two cores, which the job does not get; at one tick a second,
# 1.2% (bench/RESULTS.md, issue 29).  Blocked loops are still reported.
TICK_SETTING = "distributed.admin.tick.interval"
TICK = "1s"


# Starting two LocalClusters at once in one process races in distributed's
# dashboard imports; starting them one at a time is cheap.
_start_lock = threading.Lock()


@dataclass
class Cluster:
    client: Any   # distributed.Client
    kind: str
    dashboard: str | None
    local: Any = None  # the LocalCluster we started, if any


def _dashboard_address(settings: Settings) -> str:
    # Any free port unless one is set: several jobs (and tests) may run side
    # by side.  Without bokeh installed Dask serves no dashboard pages, and
    # we show no link.
    return _hostport(settings.dask_host, settings.dask_dashboard_port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dashboard_link(client: Any, settings: Settings) -> str | None:
    """The dashboard's address as it listens.  Dask's own link names the
    machine's address for an in-process cluster, where nothing listens."""
    if not _has_dashboard():
        return None
    port = client.scheduler_info().get("services", {}).get("dashboard")
    if not port:
        return None
    host = settings.dask_host
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://{_hostport(host, port)}/status"


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


_atexit_registered: list[bool] = []
_clusters: dict[tuple, Cluster] = {}


def deadlock_prone(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """True for the CPython versions whose ``sys._current_frames()`` can
    deadlock (gh-106883): 3.11.0 to 3.11.11.  3.12 runs the collector only
    between bytecodes, not inside an allocation, and is not reported."""
    return tuple(version[:2]) == (3, 11) and tuple(version[:3]) < (3, 11, 12)


def disable_profiler() -> None:
    """Turn Dask's worker profiler off for the workers this process starts.

    Set in the process's Dask config rather than passed to one cluster:
    workers read it when they are created, and nanny processes copy this
    process's config, so workers added later by ``adapt`` inherit it too.
    """
    import dask

    dask.config.set({PROFILER_SETTING: False})


def slow_ticks() -> None:
    """One event-loop tick a second in the clusters this process starts
    (``TICK_SETTING``), read like the profiler setting when they start."""
    import dask

    dask.config.set({TICK_SETTING: TICK})


def _worker_facts() -> tuple[tuple[int, ...], bool]:
    import dask

    return tuple(sys.version_info[:3]), bool(dask.config.get(PROFILER_SETTING))


def profiler_warning(client) -> str | None:
    """One line for an existing cluster whose workers run a Python that can
    deadlock with the profiler on (their config is not ours to change)."""
    try:
        facts = list(client.run(_worker_facts).values())
    except Exception:  # noqa: BLE001 - a warning must not fail the job
        facts = [(tuple(sys.version_info[:3]), True)]
    risky = sorted({v for v, profiling in facts if profiling and deadlock_prone(v)})
    if not risky:
        return None
    versions = ", ".join(".".join(map(str, v)) for v in risky)
    return (f"the Dask workers run Python {versions} with Dask's profiler on, which can "
            f"deadlock a worker (CPython gh-106883, fixed in 3.11.12): set "
            f"{PROFILER_SETTING}: false in the cluster's Dask config "
            f"(DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False), or run Python >= 3.11.12")


@contextlib.contextmanager
def open_cluster(settings: Settings, workers: int, min_workers: int | None = None,
                 scheduler: str | None = None, gpu: bool = False) -> Iterator[Cluster]:
    """A Dask client for a job.  Local clusters are started once per process
    and shared by its jobs (starting distributed clusters concurrently in one
    process is not safe, and a warm cluster saves each job its start-up).

    ``gpu`` with a ClickHouse server: a dask-cuda ``LocalCUDACluster``, one
    worker per visible GPU (``CUDA_VISIBLE_DEVICES`` is respected), with an
    RMM pool of ``GPUBACKFILL_RMM_POOL_SIZE`` that CuPy and numba allocate
    from when rmm is installed."""
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
        warning = profiler_warning(client)
        if warning:
            log.warning(warning)
        try:
            yield Cluster(client, f"scheduler {address}", client.dashboard_link)
        finally:
            client.close()
        return
    embedded = settings.embedded_clickhouse
    key = (embedded, workers, min_workers if not embedded else None, gpu, settings.dask_host,
           settings.dask_dashboard_port)
    disable_profiler()
    slow_ticks()
    with _start_lock:
        cluster = _clusters.get(key)
        if cluster is None:
            if gpu and not embedded:
                local, kind = _cuda_cluster(settings)
            elif embedded:
                # In-process: the scheduler speaks inproc://, but its HTTP
                # server and the worker's listen on TCP, on every interface
                # unless given an address.
                local = LocalCluster(n_workers=1, threads_per_worker=workers, processes=False,
                                     dashboard_address=_dashboard_address(settings),
                                     worker_dashboard_address=_hostport(settings.dask_host, 0))
                kind = f"in-process, {workers} threads"
            else:
                local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                     host=settings.dask_host,
                                     dashboard_address=_dashboard_address(settings))
                if min_workers is not None and min_workers < workers:
                    local.adapt(minimum=min_workers, maximum=workers)
                kind = f"local processes, {min_workers or workers}..{workers} workers"
            client = Client(local, set_as_default=False)
            cluster = Cluster(client, kind, _dashboard_link(client, settings))
            cluster.local = local
            if not _atexit_registered:
                # Closed at exit, before the interpreter tears threads down;
                # registered with the first cluster, not at import.
                atexit.register(close_clusters)
                _atexit_registered.append(True)
            _clusters[key] = cluster
    yield cluster


def _cuda_cluster(settings: Settings):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise DependencyError("the cuda backend on worker processes needs dask-cuda: "
                              "pip install 'gpubackfill[cuda12]' (or [cuda13])") from None
    kwargs: dict = {"host": settings.dask_host, "dashboard_address": _dashboard_address(settings)}
    if settings.rmm_pool_size:
        kwargs["rmm_pool_size"] = settings.rmm_pool_size
        try:
            import rmm  # noqa: F401  (only whether it is installed)

            kwargs["rmm_allocator_external_lib_list"] = ["cupy", "numba"]
        except ImportError:
            pass
    local = LocalCUDACluster(**kwargs)
    return local, f"LocalCUDACluster, {len(local.workers)} GPU worker(s)"


def close_clusters() -> None:
    """Shut down the clusters this process started."""
    with _start_lock:
        for cluster in _clusters.values():
            cluster.client.close()
            cluster.local.close()
        _clusters.clear()



def cluster_summary() -> list[dict]:
    """The clusters this process started: kind, live Dask workers, dashboard."""
    with _start_lock:
        clusters = list(_clusters.values())
    out = []
    for c in clusters:
        workers: int | str
        try:
            workers = len(c.client.scheduler_info().get("workers", {}))
        except Exception as exc:  # a cluster that died: report, do not fail the caller
            workers = f"unknown: {type(exc).__name__}"
        out.append({"kind": c.kind, "workers": workers, "dashboard": c.dashboard})
    return out
