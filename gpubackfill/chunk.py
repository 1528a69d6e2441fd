"""One chunk, start to finish: load -> validate -> compute -> write -> record.

This is the function Dask runs on a worker.  It receives a small
descriptor (never arrays), opens its own connections (cached per process),
and records the outcome in Redis itself under the lease it was given.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numba
import numpy as np
import psutil
import pyarrow as pa

from kernels.core import FLAG_AMBIGUOUS, FLAG_RESOLVED

from . import backends
from .allocator import keep_freed_memory
from .candles import frames as candles_mod
from .compute import compute_series
from .config import BYTES_PER_CANDLE, Settings
from .connections import clickhouse_breaker, connections
from .engine.watchdog import thread_stack
from .errors import BreakerOpen, DependencyError, GpubackfillError, InvalidCandles
from .granularity import GRANULARITIES
from .jobs.result import ChunkResult, Segment, SegmentOutcome
from .labels import Series, halo, resolve
from .logs import log
from .resilience import BREAKERS, classify, is_outage, retrying
from .storage.clickhouse_store import SeriesKey, Store, input_fingerprint
from .storage.redis import RedisState
from .times import iso


@dataclass(frozen=True)
class ChunkTask:
    job_id: str
    index: int
    token: int
    segments: tuple[Segment, ...]
    names: dict[int, tuple[str, str]]  # series index -> (instrument, granularity)
    labels: list[str]
    params: dict[str, dict[str, Any]]
    label_set: str
    force: bool
    backend: str
    max_attempts: int
    numba_threads: int = 0
    timeout_s: float = 0.0  # the chunk's deadline (engine/watchdog.py); 0: none

    @property
    def rows(self) -> int:
        """Candles planned in the chunk."""
        return sum(s.rows for s in self.segments)

    def key(self, seg: Segment) -> SeriesKey:
        return SeriesKey(*self.names[seg.series])


class LeaseLost(GpubackfillError):
    """Another worker holds this chunk now (our lease expired): do not write."""


class _LeaseKeeper:
    """One thread per process that renews the leases of the chunks running
    in it (a thread per chunk would start and stop thousands of threads),
    and takes back those past their deadline."""

    def __init__(self) -> None:
        self._held: dict[int, Heartbeat] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, beat: Heartbeat) -> None:
        with self._lock:
            self._held[id(beat)] = beat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="lease-keeper")
                self._thread.start()

    def remove(self, beat: Heartbeat) -> None:
        with self._lock:
            self._held.pop(id(beat), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                beats = list(self._held.values())
            now = time.monotonic()
            for beat in beats:
                if beat.deadline is not None and now >= beat.deadline:
                    beat.overdue(now)
                    continue
                if not beat.lost and now >= beat.due:
                    try:
                        beat.renew()
                    except DependencyError:
                        pass  # Redis away for a moment: the fence decides before writing
            self._wake.wait(0.5)


_KEEPER = _LeaseKeeper()


class Heartbeat:
    """Keeps the chunk's lease renewed while it runs; ``fence()`` before writing."""

    def __init__(self, state: RedisState, task: ChunkTask, lease_ms: int):
        self.state, self.task, self.lease_ms = state, task, lease_ms
        self.lost = False
        self.started = time.monotonic()
        self.due = self.started + lease_ms / 3000
        self.deadline = self.started + task.timeout_s if task.timeout_s > 0 else None
        self.take_back_at: float | None = None
        self.reason = ""
        self.thread = threading.get_ident()

    def __enter__(self) -> Heartbeat:
        _KEEPER.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _KEEPER.remove(self)

    def renew(self) -> bool:
        ok = self.state.renew_lease(self.task.job_id, self.task.index, self.task.token, self.lease_ms)
        self.lost = self.lost or not ok
        self.due = time.monotonic() + self.lease_ms / 3000
        return ok

    def overdue(self, now: float) -> None:
        """Past the deadline (runs on the keeper thread).

        First the lease is renewed one last time and never again, and the
        thread's stack is logged.  The attempt is failed (the chunk queued
        again, or dead-lettered once its attempts are used up) only when
        that last lease is about to run out: a run that passed its fence
        just before the deadline keeps the whole lease period it was
        promised to finish its write, as with any expired lease.
        """
        task = self.task
        if self.take_back_at is None:
            still_ours = False
            if not self.lost:
                try:
                    still_ours = self.renew()
                except DependencyError:
                    pass
            self.lost = True
            if not still_ours:
                self.deadline = None  # taken back already: nothing more to do
                return
            margin = min(2.0, self.lease_ms / 4000)
            self.take_back_at = now + self.lease_ms / 1000 - margin
            stack = thread_stack(self.thread)
            self.reason = (f"timeout: chunk {task.index} ran {now - self.started:.0f}s, past its "
                           f"deadline of {task.timeout_s:g}s; taken back\n{stack}")
            log.error("%s", self.reason, extra={"job_id": task.job_id, "chunk": task.index})
            try:
                self.state.note(task.job_id, "chunk_timeout", self.reason[:4000])
            except DependencyError:
                pass
            return
        if now < self.take_back_at:
            return
        self.deadline = None
        try:
            self.state.fail(task.job_id, task.index, task.token, self.reason, task.max_attempts,
                            retryable=True, category="transient",
                            detail={"digest": "chunk-timeout", "retries": 0})
        except DependencyError:
            pass  # Redis away: the lease is no longer renewed, so it expires instead

    def check(self) -> None:
        """Raise LeaseLost unless the lease is still ours (and renew it)."""
        if self.lost or not self.renew():
            self._taken_back()

    def _taken_back(self) -> None:
        self.lost = True
        raise LeaseLost(f"chunk {self.task.index} of job {self.task.job_id} was taken back")

    def fence(self) -> bool:
        """Before the chunk writes: raise LeaseLost unless the lease is still
        ours (and renew it); False when a run under the same lease reached
        its write before (``RedisState.fence_write``), so the write must
        replace rows rather than trust the plan's 'fresh' hint.

        A stale worker that passed this check has a whole lease period
        before anyone else may claim the chunk, so its write cannot land
        after the next owner's.
        """
        got = 0 if self.lost else self.state.fence_write(self.task.job_id, self.task.index, self.task.token,
                                                         self.lease_ms)
        self.due = time.monotonic() + self.lease_ms / 3000
        if not got:
            self._taken_back()
        return got == 1


def run_chunk(settings: Settings, task: ChunkTask, io: SharedIO | None = None) -> ChunkResult:
    """Compute and write one chunk; record its result in Redis.

    Never raises for a chunk's own failure: each error is retried as its
    category allows (``resilience.POLICIES``), then recorded: an outage of
    ClickHouse puts the chunk back in the queue, anything else that cannot
    be fixed by retrying dead-letters it.

    ``io``: the chunk is one of a run of consecutive chunks that share one
    read and one insert (``SharedIO``); a chunk done here is then recorded
    by ``run_chunks`` once that insert is in.
    """
    keep_freed_memory()
    # Kernels run in several worker threads at once: only the thread-safe
    # numba threading layers (tbb, omp) may be used.  Set before the first
    # parallel kernel of the process, which is a chunk's.
    numba.config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]
    if task.numba_threads:
        numba.set_num_threads(min(task.numba_threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    store, state = connections(settings)
    if _over_memory_budget(settings, task):
        split = _split(store, state, task, "memory budget")
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

    with Heartbeat(state, task, settings.lease_seconds * 1000) as lease:
        try:
            # With shared I/O the write comes later (``_insert_and_record``,
            # which fences it): here only the lease is checked.
            result = retrying(
                lambda: BREAKERS.call(breaker, attempt, lease.fence if io is None else lease.check),
                settings.retry_base_seconds, on_retry,
                give_up=lambda e: isinstance(e, LeaseLost) or _splittable(settings, task, e))
        except LeaseLost as exc:
            return ChunkResult(task.index, "stale", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none escapes
            try:
                return _record_failure(store, state, settings, task, exc, len(retries))
            except DependencyError as lost:
                # Redis is away too: the lease runs out and the chunk is re-run.
                return ChunkResult(task.index, "outage", error=f"{exc}; not recorded: {lost}",
                                   retry_after=settings.retry_base_seconds)
    result = replace(result, duration=time.perf_counter() - t0)
    if io is not None and result.ok:
        return result  # its rows wait for the run's shared insert: run_chunks records it
    return _record(settings, state, task, result, on_retry)


def _record(settings: Settings, state: RedisState, task: ChunkTask, result: ChunkResult,
            on_retry) -> ChunkResult:
    """Settle a chunk whose rows are written: its result goes to Redis."""
    try:
        status = retrying(lambda: state.complete(task.job_id, task.index, task.token, result),
                          settings.retry_base_seconds, on_retry)
    except DependencyError as exc:
        # Written but not recorded: when the lease runs out the chunk runs
        # again and finds its rows by their input fingerprint (a cache hit).
        return ChunkResult(task.index, "outage", error=f"not recorded: {exc}",
                           retry_after=settings.retry_base_seconds)
    if status[0] == "stale":
        return replace(result, kind="stale", error="the lease was taken back before the record")
    return result


def run_chunks(settings: Settings, tasks: tuple[ChunkTask, ...]) -> list[ChunkResult]:
    """Chunks claimed together, run one after another in this thread.

    Small chunks are batched so that Dask's per-task cost (about 4 ms of
    event-loop CPU each, here) is paid once for several of them.  Each chunk
    is still leased, fenced and recorded on its own.  One that waited renews
    its lease before it starts; once the job stops running, a lease was
    taken back, or a chunk does not end done, the rest go back to the queue
    untouched for the driver to decide."""
    io = SharedIO.for_run(settings, tasks)
    results: list[ChunkResult] = []
    waiting: list[tuple[ChunkTask, ChunkResult]] = []  # done, their rows not yet inserted
    for i, task in enumerate(tasks):
        if i:
            why = _resume(settings, task)
            if why:
                results += _give_back(settings, tasks[i:], why)
                break
        result = run_chunk(settings, task, io)
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
    first_write = True
    for task, result in waiting:
        try:
            got = state.fence_write(task.job_id, task.index, task.token, lease_ms)
        except DependencyError:
            got = 0  # not sure it is still ours: its lease runs out and it runs again
        if got:
            kept.append((task, result))
            first_write = first_write and got == 1
        else:
            out.append(ChunkResult(task.index, "stale", error="the lease was taken back before the write"))

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
    seconds, candles = 0.0, 0
    for n, (task, result) in enumerate(kept):
        stages = {**result.stages, "write": result.stages.get("write", 0.0) + share}
        result = replace(result, stages=stages, duration=result.duration + share)
        seconds += result.duration
        last = n == len(kept) - 1
        result = replace(result, sample=(seconds, candles + result.candles) if last else (0.0, 0))
        result = _record(settings, state, task, result,
                         lambda category, exc, attempt, task=task: log_retry(state, task, category,
                                                                             exc, attempt))
        candles += result.candles if result.ok else 0
        out.append(result)
    return out


class SharedIO:
    """One read and one insert for a run of consecutive chunks of a series.

    Small chunks go several to a Dask task (``run_chunks``).  When they are
    consecutive ranges of one series and a first backfill of them (the
    plan's 'fresh' hint), each chunk's load is cut from one read of the
    whole run (halo included), and their label rows go to ClickHouse in one
    insert after the last chunk: one statement and one part instead of one
    per chunk.  Everything else a chunk does (validation, fingerprint,
    compute, its lease, its record) stays its own.  Any other call goes to
    the store itself."""

    def __init__(self, store: Store, tasks: tuple[ChunkTask, ...]):
        self.store = store
        self.key = tasks[0].key(tasks[0].segments[0])
        self.first, self.last = tasks[0].segments[0], tasks[-1].segments[0]
        self.label_set, self.job_id = tasks[0].label_set, tasks[0].job_id
        self._read: tuple[Any, np.ndarray] | None = None
        self._rows: dict[int, tuple[int, Any]] = {}  # a chunk's start_ms -> (its end_ms, its labels)

    @staticmethod
    def for_run(settings: Settings, tasks: tuple[ChunkTask, ...]) -> SharedIO | None:
        if len(tasks) < 2 or any(len(t.segments) != 1 or not t.segments[0].fresh for t in tasks):
            return None
        segs = [t.segments[0] for t in tasks]
        key = tasks[0].key(segs[0])
        try:
            resolved = resolve(tasks[0].labels, tasks[0].params)
        except Exception:  # noqa: BLE001 - bad labels fail each chunk, recorded as it should be
            return None
        if (any(t.key(g) != key for t, g in zip(tasks, segs))
                or any(b.start_ms != a.end_ms for a, b in zip(segs, segs[1:]))
                or finer_series(resolved, key) is not None):
            return None  # the finer candles' reads are each chunk's own
        store, _ = connections(settings)
        return SharedIO(store, tasks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def load_many(self, parts: list[tuple], back: int, ahead: int) -> list[tuple[Any, int, int]]:
        key, a, b, *_ = parts[0]
        if len(parts) != 1 or key != self.key or a < self.first.start_ms or b > self.last.end_ms:
            return self.store.load_many(parts, back, ahead)
        if self._read is None:
            table, _, _ = self.store.load(self.key, self.first.start_ms, self.last.end_ms, back, ahead,
                                          self.first.lo_ms, self.last.hi_ms)
            self._read = table, table.column("ts").to_numpy()
        table, ts = self._read
        i0, i1 = int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b))
        lo, hi = max(i0 - back, 0), min(i1 + ahead, len(ts))
        return [(table.slice(lo, hi - lo), i0 - lo, i1 - i0)]

    def write_labels_many(self, set_id: str, writes: list[tuple], job_id: str, fresh: bool = False,
                          record: bool = True) -> None:
        if not fresh or record or len(writes) != 1 or writes[0][0] != self.key:
            self.store.write_labels_many(set_id, writes, job_id, fresh=fresh, record=record)
            return
        _, a, b, labels, _, _ = writes[0]
        self._rows[a] = (b, labels)  # a retry replaces its first try

    def insert(self, starts: list[int]) -> None:
        """The label rows of the chunks starting at ``starts`` (done, and
        still leased), in one insert."""
        keep = set(starts)
        rows = [(a, b, labels) for a, (b, labels) in sorted(self._rows.items()) if a in keep]
        if not rows:
            return
        body = pa.concat_tables([labels for _, _, labels in rows])
        self.store.write_labels(self.key, self.label_set, rows[0][0], rows[-1][1], body, "", 0,
                                self.job_id, fresh=True, record=False)


def _resume(settings: Settings, task: ChunkTask) -> str:
    """'' when the chunk may start; else why not."""
    _, state = connections(settings)
    try:
        got = state.resume_lease(task.job_id, task.index, task.token, settings.lease_seconds * 1000)
    except DependencyError as exc:
        return f"Redis away: {exc}"
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


def log_retry(state: RedisState, task: ChunkTask, category: str, exc: BaseException, attempt: int) -> None:
    try:
        state.count(f"retries:{category}")
        state.note(task.job_id, "retry", f"chunk {task.index} attempt {attempt} ({category}): {exc}"[:500])
    except DependencyError:
        pass  # the retry itself matters more than its record


def _record_failure(store: Store, state: RedisState, settings: Settings, task: ChunkTask,
                    exc: BaseException, retries: int) -> ChunkResult:
    category = classify(exc)
    message = f"{category}: {type(exc).__name__}: {exc}"
    if is_outage(exc):
        # ClickHouse (or Redis) is down: not the chunk's fault.  It goes back
        # to the queue untouched and the driver waits for the breaker.
        state.count(f"errors:{category}")
        state.release(task.job_id, task.index, task.token)
        wait = exc.retry_after if isinstance(exc, BreakerOpen) else settings.retry_base_seconds
        return ChunkResult(task.index, "outage", error=message, category=category, retry_after=wait)
    if _splittable(settings, task, exc):
        split = _split(store, state, task, "out of memory")
        if split is not None:
            return split
    if len(task.segments) > 1 and category in ("data", "persistent"):
        # One bad series must not take the series packed with it down: every
        # series runs again as its own chunk, and only the bad one fails.
        added = state.unpack(task.job_id, task.index, task.token)
        if added:
            state.note(task.job_id, "unpack", f"chunk {task.index} ({len(task.segments)} series) "
                                              f"run again one series per chunk: {message}"[:500])
            return ChunkResult(task.index, "split", error=message, category=category)
    detail: dict[str, Any] = {"digest": _digest(exc), "retries": retries}
    if isinstance(exc, InvalidCandles) and exc.rows:
        detail["rows"] = exc.rows
    if len(task.segments) > 1 and isinstance(exc, InvalidCandles):
        detail["series_names"] = [list(task.names[s.series]) for s in task.segments]
    status, _ = state.fail(task.job_id, task.index, task.token,
                           message + "\n" + "".join(traceback.format_exception(exc, limit=8)),
                           1, retryable=False, category=category, detail=detail)
    return ChunkResult(task.index, "failed" if status == "failed" else "retry", error=message,
                       category=category, fail_job=category == "persistent")


def _digest(exc: BaseException) -> str:
    """A short stable id of where the error came from (same bug, same digest)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "|".join(f"{Path(f.filename).name}:{f.name}" for f in frames[-4:])
    return hashlib.blake2b(f"{type(exc).__name__}|{where}".encode(), digest_size=6).hexdigest()


def _over_memory_budget(settings: Settings, task: ChunkTask) -> bool:
    if not settings.memory_limit_bytes or task.rows < 2 * settings.min_chunk_size:
        return False
    rss = psutil.Process().memory_info().rss
    return rss + task.rows * BYTES_PER_CANDLE > settings.memory_limit_bytes


def _splittable(settings: Settings, task: ChunkTask, exc: BaseException) -> bool:
    return (classify(exc) == "resource" and len(task.segments) == 1
            and task.rows >= 2 * settings.min_chunk_size)


def _split(store: Store, state: RedisState, task: ChunkTask, why: str) -> ChunkResult | None:
    """Halve a one-series chunk in the plan (at its middle candle); both
    halves go back to the queue.  None when there is nothing to cut (a pack
    of small series, or fewer candles than planned)."""
    if len(task.segments) != 1:
        return None
    seg = task.segments[0]
    runs = store.chunk_starts(task.key(seg), seg.start_ms, seg.end_ms, (seg.rows + 1) // 2)
    if len(runs) < 2:
        return None
    (_, left), (mid, right) = runs[0], runs[1]
    new = state.split(task.job_id, task.index, task.token, mid, left, right + sum(n for _, n in runs[2:]))
    state.note(task.job_id, "split", f"chunk {task.index} ({seg.rows} candles, {why}) -> "
                                     f"{task.index} + {new}")
    return ChunkResult(task.index, "split", error=why, split_into=new)


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
    resolved = resolve(task.labels, task.params)
    back, ahead = halo(resolved)
    keys = [task.key(seg) for seg in task.segments]
    loaded = store.load_many([(k, s.start_ms, s.end_ms, s.lo_ms, s.hi_ms)
                              for k, s in zip(keys, task.segments)], back, ahead)
    stages.lap("load")
    finer_keys = [finer_series(resolved, k) for k in keys]
    prints = [_fingerprint(store, table, k, fk) for (table, _, _), k, fk in zip(loaded, keys, finer_keys)]
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
    incomplete = resolved_bars = ambiguous = 0
    for i, (seg, key, (table, first, own)) in enumerate(zip(task.segments, keys, loaded)):
        if i in cached:
            outcomes.append(SegmentOutcome(seg.series, own, 0, seg.rows, cached=True))
            incomplete += cached[i]
            continue
        series = candles_mod.to_series(table)
        try:
            series = candles_mod.validate(series)
        except InvalidCandles as exc:
            where = f"{key.instrument} {key.granularity}: " if len(task.segments) > 1 else ""
            raise InvalidCandles(where + str(exc), exc.row, _bad_rows(series)) from None
        stages.lap("validate")
        fk = finer_keys[i]
        if fk is not None:
            # Only the finer candles of the bars that turn out ambiguous are read.
            series = replace(series, bar_ms=GRANULARITIES[key.granularity],
                             finer=lambda starts, bar, fk=fk: _bar_path(
                                 store.load_bars(fk, starts, bar, ("ts", "open", "high", "low"))))
        computed = compute_series(series, resolved, kernels)
        labels = computed.slice(first, own)
        n_incomplete = _incomplete_rows(computed, resolved, first, own)
        incomplete += n_incomplete
        amb = _ambiguity(labels, fk)
        resolved_bars += amb.get("resolved", 0)
        ambiguous += amb.get("ambiguous", 0)
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
                       resolved=resolved_bars, ambiguous=ambiguous, stages=stages.seconds,
                       records=tuple(manifest))


def _fingerprint(store: Store | SharedIO, table, key: SeriesKey, finer_key: SeriesKey | None) -> str:
    """What a segment's labels were computed from: its candles (halo
    included) and, with resolve_with, the changes to the finer series."""
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


def finer_series(resolved, key: SeriesKey) -> SeriesKey | None:
    """The finer series a request's triple barrier resolves ambiguous bars with."""
    for r in resolved:
        if r.params.get("resolve_with"):
            return SeriesKey(key.instrument, r.params["resolve_with"])
    return None


def _ambiguity(labels, finer_key) -> dict[str, int]:
    """Bars decided by finer candles, and bars left to the tie rule."""
    if finer_key is None or "tb_flags" not in labels.column_names:
        return {}
    flags = labels.column("tb_flags").to_numpy()
    return {"resolved": int(np.count_nonzero(flags & FLAG_RESOLVED)),
            "ambiguous": int(np.count_nonzero(flags & FLAG_AMBIGUOUS))}


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
            if column.null_count:
                tail[lo - first:] |= column.is_null().to_numpy(zero_copy_only=False)
    return 0 if tail is None else int(np.count_nonzero(tail))


def default_numba_threads(workers: int) -> int:
    """Kernel threads per chunk so that concurrent chunks do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
