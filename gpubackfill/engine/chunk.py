"""One chunk, start to finish: load -> validate -> compute -> write -> record,
and the Dask task that runs several small ones in turn (``run_chunks``).

This is what Dask runs on a worker.  It receives a small descriptor
(``task.ChunkTask``, never arrays), opens its own connections (cached per
process), and records the outcome in Redis itself under the lease it was given.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..candles import frames as candles_mod
from ..common.granularity import GRANULARITIES
from ..common.logs import log
from ..common.times import iso
from ..compute import backends, compute_series
from ..compute.allocator import keep_freed_memory
from ..config import Settings
from ..errors import DependencyError, InvalidCandles, InvalidLabelSpec
from ..jobs.result import ChunkResult, SegmentOutcome
from ..labels import Series, counts, halo, wants_side
from ..sources import fingerprint as source_print
from ..storage.clickhouse_store import SeriesKey, Store, input_fingerprint
from ..storage.connections import clickhouse_breaker, connections
from ..storage.redis import RedisState
from ..storage.resilience import BREAKERS, retrying
from .failures import log_retry, over_memory_budget, record_failure, split_chunk, splittable
from .lease import Heartbeat, LeaseLost
from .shared_io import SharedIO
from .task import ChunkTask, finer_series


def run_chunk(settings: Settings, task: ChunkTask, io: SharedIO | None = None,
              behind: tuple[ChunkTask, ...] = (), behind_started: bool = False) -> ChunkResult:
    """Compute and write one chunk; record its result in Redis.

    Never raises for a chunk's own failure: each error is retried as its
    category allows (``resilience.POLICIES``), then recorded: an outage of
    ClickHouse puts the chunk back in the queue, anything else that cannot
    be fixed by retrying dead-letters it.

    ``io``: the chunk is one of a run of consecutive chunks that share one
    read and one insert (``SharedIO``); a chunk done here is then recorded
    by ``run_chunks`` once that insert is in.  ``behind``: the chunks
    after this one in its task, whose leases it keeps while it runs
    (``behind_started``: they started with it).
    """
    keep_freed_memory()
    # Kernels run in several worker threads at once: only the thread-safe
    # numba threading layers (tbb, omp) may be used.  Set before the first
    # parallel kernel of the process, which is a chunk's.
    numba.config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]
    if task.numba_threads:
        numba.set_num_threads(min(task.numba_threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    store, state = connections(settings)
    if over_memory_budget(settings, task):
        split = split_chunk(store, state, task, "memory budget")
        if split is not None:
            return split
    breaker = clickhouse_breaker(settings)
    retries: list[str] = []

    def on_retry(category: str, exc: BaseException, attempt: int) -> None:
        retries.append(category)
        log_retry(state, task, category, exc, attempt)

    t0 = time.perf_counter()
    runs = [task, replace(task, segments=tuple(replace(s, fresh=False) for s in task.segments))]

    def attempt(fence) -> ChunkResult:
        # A retry may follow an attempt that wrote part of the chunk: only
        # the first attempt keeps the plan's 'fresh' hint.
        return _compute_and_write(io or store, runs.pop(0) if len(runs) > 1 else runs[0], fence)

    with Heartbeat(state, task, settings.lease_seconds * 1000, behind, behind_started) as lease:
        try:
            # With shared I/O the write comes later (``_insert_and_record``,
            # which fences it): here only the keeper's word on the lease is checked.
            result = retrying(
                lambda: BREAKERS.call(breaker, attempt, lease.fence if io is None else lease.held),
                settings.retry_base_seconds, on_retry,
                give_up=lambda e: isinstance(e, LeaseLost) or splittable(settings, task, e))
        except LeaseLost as exc:
            return ChunkResult(task.index, "stale", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none escapes
            try:
                return record_failure(store, state, settings, task, exc, len(retries))
            except DependencyError as lost:
                # Redis is away too: the lease runs out and the chunk is re-run.
                return ChunkResult(task.index, "outage", error=f"{exc}; not recorded: {lost}",
                                   retry_after=settings.retry_base_seconds)
    result = replace(result, duration=time.perf_counter() - t0)
    if io is not None and result.ok:
        return result  # its rows wait for the run's shared insert: run_chunks records it
    return _record(settings, state, task, result, on_retry)


# Seconds this process spent recording a job's chunks, not yet in a
# result: a record cannot carry its own time, so the next one carries it
# (a job's last records per process are left out of its "record" stage).
_record_seconds: dict[str, float] = {}
_record_lock = threading.Lock()


def _record(settings: Settings, state: RedisState, task: ChunkTask, result: ChunkResult,
            on_retry) -> ChunkResult:
    """Settle a chunk whose rows are written: its result goes to Redis."""
    return _record_many(settings, state, [(task, result)], on_retry)[0]


def _record_many(settings: Settings, state: RedisState, done: list[tuple[ChunkTask, ChunkResult]],
                 on_retry) -> list[ChunkResult]:
    """Settle chunks of one job whose rows are written: their results go to
    Redis in one round trip, each settled atomically on its own."""
    job_id = done[0][0].job_id
    with _record_lock:
        carried = _record_seconds.pop(job_id, 0.0)
    if carried:
        task, result = done[0]
        done = [(task, replace(result, stages={**result.stages, "record": carried})), *done[1:]]
    t0 = time.perf_counter()
    try:
        calls = [(task.index, task.token, result, {s: name[0] for s, name in task.names.items()})
                 for task, result in done]
        statuses = retrying(lambda: state.complete_many(job_id, calls), settings.retry_base_seconds, on_retry)
        with _record_lock:
            _record_seconds[job_id] = _record_seconds.get(job_id, 0.0) + time.perf_counter() - t0
    except DependencyError as exc:
        # Written but not recorded: when the lease runs out the chunk runs
        # again and finds its rows by their input fingerprint (a cache hit).
        return [ChunkResult(task.index, "outage", error=f"not recorded: {exc}",
                            retry_after=settings.retry_base_seconds) for task, _ in done]
    return [replace(result, kind="stale", error="the lease was taken back before the record")
            if status[0] == "stale" else result for (_, result), status in zip(done, statuses)]


def run_chunks(settings: Settings, tasks: tuple[ChunkTask, ...]) -> list[ChunkResult]:
    """Chunks claimed together, run one after another in this thread.

    Small chunks are batched so that Dask's per-task cost (about 4 ms of
    event-loop CPU each, here) is paid once for several of them.  Each chunk
    is still leased, fenced and recorded on its own, and renews its lease
    and marks it started before it starts (one whose lease was taken back
    while it waited does not start).  The driver keeps the leases of
    a task waiting in Dask's queue; once the task starts, the running
    chunk's heartbeat keeps its own and those of the chunks behind it.
    Once the job stops running, a lease was taken back, or a chunk does not
    end done, the rest go back to the queue untouched for the driver to
    decide.

    A run that shares its read (``SharedIO``) computes every chunk's labels
    at its first: its chunks start together, in one round trip, and the
    running chunk's heartbeat keeps the leases of those after it."""
    io = SharedIO.for_run(settings, tasks)
    results: list[ChunkResult] = []
    waiting: list[tuple[ChunkTask, ChunkResult]] = []  # done, their rows not yet inserted
    together = _start_run(settings, tasks) if io is not None else None
    for i, task in enumerate(tasks):
        why = together[i] if together is not None else _start(settings, task, behind=i > 0)
        if why:
            results += _give_back(settings, tasks[i:], why)
            break
        result = run_chunk(settings, task, io, tasks[i + 1:], together is not None)
        if io is not None and result.ok:
            waiting.append((task, result))
            continue
        results.append(result)
        if not result.ok and i + 1 < len(tasks):
            results += _give_back(settings, tasks[i + 1:], f"chunk {task.index} ended {result.kind}")
            break
    if io is not None and waiting:
        results += _insert_and_record(settings, io, waiting)
    order = {t.index: k for k, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[r.index])


def _insert_and_record(settings: Settings, io: SharedIO,
                       waiting: list[tuple[ChunkTask, ChunkResult]]) -> list[ChunkResult]:
    """The shared insert of the chunks that are done, then their records.

    Each chunk's lease is checked (and renewed) first; a chunk whose lease
    was taken back meanwhile leaves the insert and ends stale.  If the
    insert fails, the chunks run again one by one without the plan's
    'fresh' hint, so rows of theirs that did land are replaced, not
    repeated."""
    _, state = connections(settings)
    lease_ms = settings.lease_seconds * 1000
    kept, out = [], []
    try:
        fenced = state.fence_writes(waiting[0][0].job_id, [(t.index, t.token) for t, _ in waiting], lease_ms)
    except DependencyError:
        fenced = [0] * len(waiting)  # not sure they are still ours: their leases run out and they run again
    for (task, result), got in zip(waiting, fenced):
        if got:
            kept.append((task, result))
        else:
            out.append(ChunkResult(task.index, "stale", error="the lease was taken back before the write"))
    first_write = all(got == 1 for got in fenced if got)

    def one_by_one() -> list[ChunkResult]:
        return out + [run_chunk(settings, replace(t, segments=tuple(replace(g, fresh=False)
                                                                   for g in t.segments)))
                      for t, _ in kept]

    if not first_write:
        # A run under these leases reached its write before (Dask ran the
        # task again after its worker died): replace rows, chunk by chunk.
        return one_by_one()
    t0 = time.perf_counter()
    try:
        BREAKERS.call(clickhouse_breaker(settings), io.insert, [t.segments[0].start_ms for t, _ in kept])
    except Exception as exc:  # noqa: BLE001 - each chunk is run and recorded on its own instead
        log.warning("shared insert of chunks %s failed (%s: %s); running them one by one",
                    [t.index for t, _ in kept], type(exc).__name__, exc)
        return one_by_one()
    share = (time.perf_counter() - t0) / max(1, len(kept))
    # One ETA sample for the task, added with its last record: the first
    # chunk carries the whole run's read and all of them end together, so
    # per chunk the times spread wider than the job's speed does.
    done = []
    seconds, candles = 0.0, 0
    for n, (task, result) in enumerate(kept):
        stages = {**result.stages, "write": result.stages.get("write", 0.0) + share}
        result = replace(result, stages=stages, duration=result.duration + share)
        seconds += result.duration
        candles += result.candles
        last = n == len(kept) - 1
        done.append((task, replace(result, sample=(seconds, candles) if last else (0.0, 0))))
    task0 = kept[0][0]
    return out + _record_many(settings, state, done,
                              lambda category, exc, attempt: log_retry(state, task0, category, exc, attempt))


def _start(settings: Settings, task: ChunkTask, behind: bool) -> str:
    """'' when the chunk may start (its lease is marked started); else why
    not (``behind``: it waited behind others in its task, and does not
    start once its job no longer runs)."""
    _, state = connections(settings)
    try:
        got = state.start_lease(task.job_id, task.index, task.token, settings.lease_seconds * 1000, behind)
    except DependencyError as exc:
        return f"Redis away: {exc}"
    return _why_not(got)


def _start_run(settings: Settings, tasks: tuple[ChunkTask, ...]) -> list[str]:
    """``_start`` for each chunk of a task, in one round trip (the first
    one's 'behind' is False, the rest True)."""
    _, state = connections(settings)
    try:
        got = state.start_leases(tasks[0].job_id, [(t.index, t.token, i > 0) for i, t in enumerate(tasks)],
                                 settings.lease_seconds * 1000)
    except DependencyError as exc:
        return [f"Redis away: {exc}"] * len(tasks)
    return [_why_not(g) for g in got]


def _why_not(got: str) -> str:
    return "" if got == "ok" else ("its lease was taken back" if got == "lost" else f"the job is {got}")


def _give_back(settings: Settings, tasks: tuple[ChunkTask, ...], why: str) -> list[ChunkResult]:
    _, state = connections(settings)
    out = []
    for task in tasks:
        try:
            state.release(task.job_id, task.index, task.token)  # a no-op once the lease is not ours
        except DependencyError:
            pass  # the lease runs out instead
        out.append(ChunkResult(task.index, "stale", error=f"not started: {why}"))
    return out


class _Stages:
    """Seconds per step of a chunk (load, fingerprint, cache, validate,
    compute, write), recorded with its result: ``status`` shows where a
    job's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


def _compute_and_write(store: Store | SharedIO, task: ChunkTask, fence=lambda: None) -> ChunkResult:
    """Every segment of the chunk: one read of all their candles, one write
    of all their label rows (a pack of small series costs what one chunk does)."""
    stages = _Stages()
    # Changes to the candles after this moment may be missing from the labels:
    # the record's computed-at, which `update` compares with the ingest log.
    computed_at = time.time_ns() // 1_000_000
    if task.invalid:
        raise InvalidLabelSpec(task.invalid)
    resolved = list(task.resolved)
    back, ahead = halo(resolved)
    sided = bool(wants_side(resolved))
    keys = [task.key(seg) for seg in task.segments]
    # A source's side is in its prints (``sources.fingerprint``), so read where it maps one.
    printed_side = [store.source_sided(k) for k in keys]
    loaded = store.load_many([(k, s.start_ms, s.end_ms, s.lo_ms, s.hi_ms)
                              for k, s in zip(keys, task.segments)], back, ahead,
                             side=sided or any(printed_side))
    stages.lap("load")
    finer_keys = [finer_series(resolved, k) for k in keys]
    prints = [_fingerprint(store, table, k, fk, (seg.start_ms, seg.end_ms, first, own, back, ahead), ps)
              for (table, first, own), k, fk, seg, ps in zip(loaded, keys, finer_keys, task.segments,
                                                             printed_side)]
    stages.lap("fingerprint")
    # Fresh: no label rows were there when planned, and the job's writer
    # claim kept it so; hence nothing to find in the cache or to replace.
    fresh = all(seg.fresh for seg in task.segments)
    cached: dict[int, int] = {}
    if not task.force and not fresh:
        records = store.chunk_records([(k, s.start_ms, s.end_ms) for k, s in zip(keys, task.segments)],
                                      task.label_set)
        for i, rec in enumerate(records):
            if rec is not None and rec[0] == prints[i]:
                cached[i] = rec[1]
        stages.lap("cache check")
    kernels = backends.select(task.backend).kernels
    writes, outcomes, manifest = [], [], []
    incomplete = 0
    counters: dict[str, int] = {}
    for i, (seg, key, (table, first, own)) in enumerate(zip(task.segments, keys, loaded)):
        if i in cached:
            outcomes.append(SegmentOutcome(seg.series, own, 0, seg.rows, cached=True))
            incomplete += cached[i]
            continue
        def labels_of(candles, key=key, fk=finer_keys[i]):
            series = candles_mod.to_series(candles, side=sided)
            try:
                series = candles_mod.validate(series)
            except InvalidCandles as exc:
                where = f"{key.instrument} {key.granularity}: " if len(task.segments) > 1 else ""
                raise InvalidCandles(where + str(exc), exc.row, _bad_rows(series)) from None
            stages.lap("validate")
            if fk is not None:
                # Only the finer candles of the bars the labels ask for are read.
                series = replace(series, bar_ms=GRANULARITIES[key.granularity],
                                 finer=lambda starts, bar: _bar_path(
                                     store.load_bars(fk, starts, bar, ("ts", "open", "high", "low"))))
            return compute_series(series, resolved, kernels)

        run = store.labels(seg.start_ms, seg.end_ms, labels_of) if isinstance(store, SharedIO) else None
        computed, first, own = run if run is not None else (labels_of(table), first, own)
        labels = computed.slice(first, own)
        n_incomplete = _incomplete_rows(computed, resolved, first, own)
        incomplete += n_incomplete
        for name, n in counts(resolved, labels).items():
            counters[name] = counters.get(name, 0) + n
        writes.append((key, seg.start_ms, seg.end_ms, labels, prints[i], n_incomplete))
        manifest.append((seg.series, seg.start_ms, seg.end_ms, prints[i], labels.num_rows, n_incomplete,
                         computed_at))
        outcomes.append(SegmentOutcome(seg.series, own, labels.num_rows, seg.rows))
        stages.lap("compute")
    if writes:
        if fence() is False:
            # A run under this lease wrote before (its worker died after the
            # insert, and Dask ran the task again): replace, do not add.
            fresh = False
        # The manifest rows go with the result to Redis; the driver inserts
        # them in batches (one small insert per chunk was ~10% of its time).
        store.write_labels_many(task.label_set, writes, task.job_id, fresh=fresh, record=False)
        stages.lap("write")
    return ChunkResult(task.index, "done", segments=tuple(outcomes),
                       cache_hit=len(cached) == len(task.segments), incomplete=incomplete,
                       counters=counters, stages=stages.seconds,
                       records=tuple(manifest))


def _fingerprint(store: Store | SharedIO, table, key: SeriesKey, finer_key: SeriesKey | None,
                 where: tuple[int, int, int, int, int, int], sided: bool = False) -> str:
    """What a segment's labels were computed from: its candles (halo
    included) and, where its labels read finer candles, the changes to them.
    Over a source, a print ClickHouse can recompute (``sources.fingerprint``;
    ``where``: the segment's start, end, first own row, own rows and halo;
    ``sided``: the source maps a side, which is in the print)."""
    if key.source:
        own = source_print.chunk_print(table, where[2], where[3], where[4], where[5], where[0], where[1],
                                       sided)
        if finer_key is None or not table.num_rows:
            return own
        ts = table.column("ts")
        a, b = int(ts[0].as_py()), int(ts[-1].as_py()) + GRANULARITIES[key.granularity]
        return source_print.with_finer(own, a, b, store.change_stamp(finer_key, a, b))
    fingerprint = input_fingerprint(table)
    if finer_key is not None and table.num_rows:
        ts = table.column("ts")
        digest = store.change_stamp(finer_key, int(ts[0].as_py()),
                                    int(ts[-1].as_py()) + GRANULARITIES[key.granularity])
        fingerprint = hashlib.blake2b(f"{fingerprint}|{digest}".encode(), digest_size=16).hexdigest()
    return fingerprint


def _bar_path(table) -> Series:
    """Finer candles as the replay of a bar reads them: ts, open, high and
    low (their close is never used, so it is not read; ``close`` aliases
    ``low`` only to fill the field)."""
    cols = {c: table.column(c).to_numpy() for c in ("ts", "open", "high", "low")}
    # Read-only like every other input, so the replay kernel compiles once.
    return candles_mod.read_only(Series(ts=cols["ts"], open=cols["open"], high=cols["high"],
                                        low=cols["low"], close=cols["low"]))


def _bad_rows(series, limit: int = 20) -> list[list]:
    """[ts (ISO), reason] of the first offending rows, for the dead-letter entry."""
    codes = candles_mod.defect_codes(series)
    out = []
    for i in np.flatnonzero(codes)[:limit]:
        ts = int(series.ts[i])
        out.append([iso(ts),
                    candles_mod.describe(int(codes[i]))])
    return out


def _incomplete_rows(computed, resolved, first: int, own: int) -> int:
    """The chunk's rows (``own`` from ``first`` of ``computed``, which runs
    to the end of the candles loaded, look-ahead included) with a label
    NULL for lack of future candles: a NULL in one of a label's columns
    within its look-ahead of the last candle.  Only a chunk the data ends
    within look-ahead of has any; they are recomputed when candles arrive."""
    end = computed.num_rows
    tail: np.ndarray | None = None
    for r in resolved:
        lo = max(first, end - r.halo()[1])
        if lo >= first + own:
            continue
        if tail is None:
            tail = np.zeros(own, dtype=bool)
        for name, _ in r.outputs():
            column = computed.column(name).slice(lo, first + own - lo)
            tail[lo - first:] |= _null_rows(column)
    return 0 if tail is None else int(np.count_nonzero(tail))


def _null_rows(column) -> np.ndarray:
    """Rows where the value is NULL; for a list column (never NULL itself),
    rows with a NULL element."""
    if not pa.types.is_list(column.type):
        return column.is_null().to_numpy(zero_copy_only=False)
    out = np.zeros(len(column), dtype=bool)
    at = 0
    for chunk in column.chunks:
        nulls = pc.list_flatten(chunk).is_null().to_numpy(zero_copy_only=False)
        rows = pc.list_parent_indices(chunk).to_numpy()
        out[at + rows[nulls]] = True
        at += len(chunk)
    return out
