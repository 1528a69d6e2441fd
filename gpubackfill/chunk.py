"""One chunk, start to finish: load -> validate -> compute -> write -> record.

This is the function Dask runs on a worker.  It receives a small
descriptor (never arrays), opens its own connections (cached per process),
and records the outcome in Redis itself under the lease it was given.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numba

from . import backends, candles as candles_mod
from .allocator import keep_freed_memory
from .compute import compute_series
from .config import Settings
from .errors import InvalidInput
from .labels import halo, resolve
from .redis_server import connect as redis_connect
from .state.redis_store import RedisState
from .store import SeriesKey, Store, input_fingerprint

# Kernels run in several worker threads at once: only the thread-safe
# numba threading layers (tbb, omp) may be used.
numba.config.THREADING_LAYER = "threadsafe"


@dataclass(frozen=True)
class ChunkTask:
    job_id: str
    index: int
    token: int
    instrument: str
    granularity: str
    start_ms: int
    end_ms: int
    labels: list[str]
    params: dict[str, dict[str, Any]]
    label_set: str
    force: bool
    backend: str
    max_attempts: int
    numba_threads: int = 0


_local = threading.local()
_shared: dict[tuple, tuple[Store, RedisState]] = {}
_shared_lock = threading.Lock()


def connections(settings: Settings) -> tuple[Store, RedisState]:
    """Store and state for this process (created once per settings)."""
    key = (settings.clickhouse_url, str(settings.home), settings.redis_url, settings.redis_prefix)
    with _shared_lock:
        if key not in _shared:
            client, where = redis_connect(settings)
            _shared[key] = (Store(settings),
                            RedisState(client, settings.redis_prefix, settings.redis_ttl, where))
        return _shared[key]


def run_chunk(settings: Settings, task: ChunkTask) -> dict[str, Any]:
    """Compute and write one chunk; record the outcome in Redis.

    Never raises for a chunk's own failure: the failure is recorded (retried
    or given up according to its category) and reported in the result.
    """
    keep_freed_memory()
    if task.numba_threads:
        numba.set_num_threads(min(task.numba_threads, numba.config.NUMBA_NUM_THREADS))
    store, state = connections(settings)
    t0 = time.perf_counter()
    try:
        outcome = _compute_and_write(store, task)
    except InvalidInput as exc:  # bad data: retrying cannot help
        state.fail(task.job_id, task.index, task.token, f"data: {exc}", task.max_attempts,
                   retryable=False)
        return {"index": task.index, "ok": False, "error": str(exc), "retry": False}
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        status, _ = state.fail(task.job_id, task.index, task.token,
                               msg + "\n" + traceback.format_exc(limit=5), task.max_attempts)
        return {"index": task.index, "ok": False, "error": msg, "retry": status == "retry"}
    duration = time.perf_counter() - t0
    state.complete(task.job_id, task.index, task.token, outcome["candles"], outcome["rows"],
                   outcome["cache_hit"], duration)
    return {"index": task.index, "ok": True, "duration": duration, **outcome}


def _compute_and_write(store: Store, task: ChunkTask) -> dict[str, Any]:
    key = SeriesKey(task.instrument, task.granularity)
    resolved = resolve(task.labels, task.params)
    back, ahead = halo(resolved)
    table, first, own = store.load(key, task.start_ms, task.end_ms, back, ahead)
    fingerprint = input_fingerprint(table)
    if not task.force:
        record = store.chunk_record(key, task.label_set, task.start_ms, task.end_ms)
        if record is not None and record[0] == fingerprint:
            return {"candles": own, "rows": 0, "cache_hit": True, "incomplete": record[1]}
    series = candles_mod.validate(candles_mod.to_series(table))
    kernels = backends.select(task.backend).kernels
    labels = compute_series(series, resolved, kernels).slice(first, own)
    incomplete = _incomplete_rows(labels)
    store.write_labels(key, task.label_set, task.start_ms, task.end_ms, labels, fingerprint,
                       incomplete, task.job_id)
    return {"candles": own, "rows": labels.num_rows, "cache_hit": False, "incomplete": incomplete}


def _incomplete_rows(labels) -> int:
    """Rows left NULL for lack of future candles (recomputed when they arrive)."""
    if "tb_flags" in labels.column_names:
        import pyarrow.compute as pc

        flags = labels.column("tb_flags")
        return int(pc.sum(pc.not_equal(pc.bit_wise_and(flags, 4), 0).cast("int64")).as_py() or 0)
    return 0


def default_numba_threads(workers: int) -> int:
    """Kernel threads per chunk so that concurrent chunks do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
