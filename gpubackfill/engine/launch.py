"""Running a job: become its driver, start it (one Redis script,
``begin.lua``), open the cluster, drive the chunks (``driver.py``), and
settle; on the way in and out, the manifest rows chunks left in Redis go
to ClickHouse."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..common import logs
from ..config import Settings
from ..errors import DependencyError, InvalidTransition
from ..jobs.machine import FINAL_JOB_STATES
from ..jobs.plan import mark_fresh
from ..jobs.result import Segment
from ..jobs.spec import JobSpec
from ..labels import finer_candles
from ..storage.clickhouse_store import SeriesKey, Store
from ..storage.redis import RedisState
from . import bars
from .lease import dead_local_owner, new_owner


@dataclass
class RunResult:
    job_id: str
    status: str
    seconds: float
    candles: int


def execute(store: Store, state: RedisState, settings: Settings, job_id: str,
            progress: Callable[[], None] | None = None, scheduler: str | None = None,
            stop: threading.Event | None = None) -> RunResult:
    """Run (or resume) a job until it is settled, cancelled or stopped.

    Pause takes effect between chunks: running chunks finish, then this
    waits until the job is resumed or cancelled.  ``stop`` (set by a
    signal handler) interrupts: no new chunks, running ones finish, the
    job becomes ``interrupted`` and ``execute`` resumes it later.
    """
    owner = new_owner()
    lease_ms = settings.lease_seconds * 1000
    t0 = time.perf_counter()
    try:
        spec, status = begin(store, state, job_id, owner, lease_ms)
        if status == "running":
            drive(store, state, settings, job_id, spec, owner, lease_ms, progress, scheduler, stop)
    finally:
        try:
            state.release_driver(job_id, owner)
        except DependencyError:
            pass  # Redis gone: the driver key expires by itself
    final = after_outage(settings, lambda: state.job(job_id), stop)
    if final["status"] in FINAL_JOB_STATES:
        drop_bars(store, job_id)
    if final["status"] != "running":
        logs.job_event(job_id, final["status"], "settled", candles_done=final["candles_done"],
                       errors=final["errors"])
    if final["status"] in FINAL_JOB_STATES:
        # Finished jobs live REDIS_TTL seconds.
        after_outage(settings, lambda: state.expire_job(job_id), stop)
    return RunResult(job_id, final["status"], time.perf_counter() - t0, final["candles_done"])


def begin(store: Store, state: RedisState, job_id: str, owner: str, lease_ms: int
          ) -> tuple[JobSpec, str]:
    """Become the job's driver and start it (``RedisState.begin_run``), take
    over from a driver process on this host that died (a SIGKILL leaves
    the lock until it expires; the caller releases the lock), insert the manifest rows a dead driver
    left, and flag the fresh chunks; (its spec, its status now).  Refused
    while another job writes an overlapping range of the same labels."""
    begun = state.begin_run(job_id, owner, lease_ms)
    if begun.outcome == "driver":
        other = begun.other[0]
        if dead_local_owner(other) and state.take_over_driver(job_id, other, owner, lease_ms):
            returned = state.release_owner(job_id, other)
            state.note(job_id, "takeover", f"driver {other} is gone; {returned} leased "
                                           f"chunk(s) returned to the queue")
            begun = state.begin_run(job_id, owner, lease_ms)
        else:
            left = int(begun.other[1])
            raise InvalidTransition(
                f"job {job_id} is already being run by {other}; if that process is stuck, its lock "
                f"runs out in {max(left, 0) / 1000:.0f}s and `gpubackfill execute {job_id}` takes over")
    if begun.outcome == "refused":
        raise InvalidTransition(f"job {job_id} is {begun.before}; nothing to execute")
    if begun.outcome == "writer":
        writer = begun.other
        raise InvalidTransition(
            f"job {writer[0]} ({writer[1]}) is writing these labels for {writer[2]} over an "
            f"overlapping range; job {job_id} stays {begun.before}: run it when that one has "
            f"finished (`gpubackfill monitor {writer[0]}`), or cancel that one "
            f"(`gpubackfill cancel {writer[0]}`)")
    if begun.before != "running":
        logs.job_event(job_id, "running", "execute", owner=owner)
    spec = JobSpec.from_record(begun.job)
    flush_records(store, state, job_id, spec)  # left by a driver that died
    if begun.status == "running":
        fresh(store, state, job_id, spec, begun.pending)
    return spec, begun.status


def writer_conflict(state: RedisState, job_id: str, spec: JobSpec) -> tuple[str, str, str] | None:
    """The running job (id, status, series) that writes the same labels
    over a range this job covers, if any: this job must wait for it."""
    return state.claim_writer(spec.label_set, job_id, spec.ranges(), check=True)


def flush_records(store: Store, state: RedisState, job_id: str, spec: JobSpec) -> int:
    """Insert the manifest rows that the job's chunks recorded in Redis
    into ClickHouse, in batches; returns how many.  Until then a written
    chunk has no row there: a re-run recomputes it rather than finding
    it in the cache, which costs time, never correctness (freshness is
    decided from the label rows themselves)."""
    series = keys_of(spec)
    done = 0
    while recs := state.records(job_id):
        store.write_records(spec.label_set, [(series[r[0]], *r[1:], job_id) for r in recs])
        state.drop_records(job_id, len(recs))
        done += len(recs)
    return done


def fresh(store: Store, state: RedisState, job_id: str, spec: JobSpec,
          pending: dict[int, tuple[Segment, ...]]) -> None:
    """Flag the pending chunks whose ranges hold no label rows now: under
    the job's writer claim they stay so until the chunk writes, so its
    first claim writes without asking (``Segment.fresh``).  Done at
    every start of ``execute``, from the rows themselves, so a chunk
    that a dead run wrote in part is never taken for fresh."""
    if not pending:
        return
    keys = keys_of(spec)
    spans = store.label_spans(spec.label_set, keys, spec.start_ms, spec.end_ms)
    order = sorted(pending)
    chunks = [pending[i] for i in order]
    marked = mark_fresh(chunks, {n: spans[k] for n, k in enumerate(keys) if k in spans})
    state.set_plan_entries(job_id, {i: m for i, old, m in zip(order, chunks, marked) if m != old})


def drive(store: Store, state: RedisState, settings: Settings, job_id: str, spec: JobSpec,
          owner: str, lease_ms: int, progress: Callable[[], None] | None, scheduler: str | None,
          stop: threading.Event | None) -> str:
    from ..compute.backends import select
    from .cluster import open_cluster
    from .driver import Driver
    from .task import default_numba_threads

    workers = spec.workers
    bars.ensure(store, spec)  # gone if the job was resumed after it settled or crashed
    chosen = select(spec.backend)
    state.set_fields(job_id, backend_used=chosen.name, backend_reason=chosen.reason)
    check_finer_series(store, state, job_id, spec)
    state.note(job_id, "backend", f"{chosen.name}: {chosen.reason}")
    base = dict(job_id=job_id, resolved=spec.resolved, invalid=spec.invalid, label_set=spec.label_set,
                force=spec.force, backend=chosen.name, max_attempts=settings.max_retries + 1,
                numba_threads=default_numba_threads(workers), source=spec.source, bars=spec.bars)
    with open_cluster(settings, workers, spec.min_workers, scheduler, gpu=chosen.name == "cuda") as cluster:
        state.set_fields(job_id, cluster=cluster.kind, dashboard=cluster.dashboard or "")
        driver = Driver(state, settings, job_id, owner, lease_ms, base, list(spec.series),
                        cluster, workers, stop, flush=lambda: flush_records(store, state, job_id, spec))
        try:
            return driver.run(progress)
        except BaseException:
            driver.abandon()  # a second signal or a crash: hand the chunks back
            raise
        finally:
            try:
                flush_records(store, state, job_id, spec)
            except DependencyError:
                pass  # kept in Redis: the next execute inserts them


def drop_bars(store: Store, job_id: str) -> None:
    """Drop a settled job's copy of its derived bars (``bars.py``); kept
    if ClickHouse is away (the next settle of the job drops it)."""
    try:
        bars.drop(store, job_id)
    except DependencyError as exc:
        logs.log.warning(f"the copy of job {job_id}'s derived bars is left in the store: {exc}",
                         extra={"job_id": job_id})


def check_finer_series(store: Store, state: RedisState, job_id: str, spec: JobSpec) -> None:
    """Say once, at the start, when the finer candles a label reads are missing."""
    if spec.invalid:
        return  # each chunk reports a bad label spec as its error, with the job's other errors
    need = finer_candles(spec.resolved)
    if need is None:
        return
    for inst, _ in spec.series:
        if not store.has_series(SeriesKey(inst, need.granularity, spec.source)):
            why = (f"no {need.granularity} candles for {inst}: {need.without} (after "
                   f"ingesting them, a new run recomputes the chunks they change)")
            logs.log.warning(why, extra={"job_id": job_id})
            state.note(job_id, need.param, why)


def keys_of(spec: JobSpec) -> list[SeriesKey]:
    """The job's series, of its source ("" where it reads the built-in table)."""
    return [SeriesKey(i, g, spec.source) for i, g in spec.series]


def after_outage(settings: Settings, fn: Callable[[], Any], stop: threading.Event | None) -> Any:
    """``fn()``, waiting out a Redis outage as the driver does (the job
    can settle just before Redis goes away); raised once ``stop`` is set."""
    stop = stop or threading.Event()
    attempt = 0
    while True:
        try:
            return fn()
        except DependencyError:
            if stop.is_set():
                raise
            attempt += 1
            stop.wait(min(30.0, settings.retry_base_seconds * 2 ** min(attempt, 5)))
