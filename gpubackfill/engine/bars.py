"""A job's copy of its derived bars: made once, read by everything, dropped
when the job settles.

Aggregating a source's M1 into H1 costs about what the whole job's floor
costs, and a job over derived bars would otherwise pay it twice: once to
plan (counts, bounds, chunk marks) and once more, spread over its chunks,
to load.  So planning runs one aggregating read per batch of the job's
derived series and writes the bars into ``bars_<job id>`` in the label
store's database (``Store.copy_bars``); planning and every chunk read
that table, a plain range read in ts order.  A source is never written:
the copy belongs to the job.

Lifecycle:
- made by ``submit.plan_backfill`` (a backfill over derived series); a plan
  that is not queued (a dry run, a refused duplicate, a failure after the
  copy) drops it at once;
- made again by ``launch.drive`` when a job runs without it (a resume after
  a crash, a retry of dead letters after the job failed): bars of the
  source as it is then, as the chunks without a copy would have read;
- dropped when the job settles (completed, failed, cancelled) by its driver,
  and by ``cancel`` for a job no driver runs; ``gpubackfill cleanup``
  sweeps up any left behind (``sweep``).
An ``update`` job has no copy: its stale chunks are few and scattered, and
each reads its own bars from the source as before.

The copy's bars equal the source's aggregation bit for bit (the volume is
added in order of value: ``sources.source.ORDER_FREE_SUM``), so each chunk's
print matches what ``update`` recomputes over the source itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from ..errors import JobNotFound
from ..jobs.machine import FINAL_JOB_STATES
from ..jobs.spec import EVER, JobSpec
from ..storage.clickhouse_store import SeriesKey, Store
from ..storage.redis import RedisState


def table_of(job_id: str) -> str:
    return f"bars_{job_id}"


def copy(store: Store, job_id: str, keys: list[SeriesKey], sizes: Mapping[SeriesKey, int]
         ) -> list[SeriesKey]:
    """Copy the derived series ``keys`` into the job's table; the keys,
    now reading it."""
    table = table_of(job_id)
    store.copy_bars(table, keys, sizes)
    return [replace(k, bars=table) for k in keys]


def ensure(store: Store, spec: JobSpec) -> None:
    """The job's copy, made again if it is gone (the job is resumed)."""
    if not spec.bars or store.has_table(spec.bars):
        return
    derived = [k for k in (SeriesKey(i, g, spec.source) for i, g in spec.series) if store.derives(k)]
    sizes = store.range_counts("candles", [base_of(store, k) for k in derived], *EVER)
    store.copy_bars(spec.bars, derived, {k: sizes[base_of(store, k)] for k in derived})


def base_of(store: Store, key: SeriesKey) -> SeriesKey:
    """The source's series a derived one aggregates."""
    return replace(key, granularity=store.source(key.source).granularity or key.granularity)


def drop(store: Store, job_id: str) -> None:
    store.drop_table(table_of(job_id))


# A copy younger than this whose job is not in Redis may be one being made
# (planning copies before the job is queued): ``sweep`` leaves it.
SWEEP_GRACE_S = 3600
_JOB_ID = re.compile(r"^[0-9a-f]{12}$")


def sweep(store: Store, state: RedisState, grace_s: int = SWEEP_GRACE_S) -> list[str]:
    """Drop the copies a settle did not (a crash between planning and
    queueing, ClickHouse away when the job settled, a driver lost while its
    job was cancelled): those of jobs that settled, and those older than
    ``grace_s`` of jobs Redis no longer knows.  The job ids dropped."""
    dropped = []
    for name, age in store.tables_named(table_of("")):
        job_id = name[len(table_of("")):]
        if not _JOB_ID.match(job_id):
            continue  # not a copy of ours
        try:
            gone = state.status(job_id) in FINAL_JOB_STATES
        except JobNotFound:
            gone = age >= grace_s
        if gone:
            store.drop_table(name)
            dropped.append(job_id)
    return dropped

