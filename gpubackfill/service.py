"""BackfillService: the one object the CLI (and the REST API) drive.

Operations: init, ingest, start (one or many series), update, execute,
pause, resume, cancel, status, series, list_jobs, metrics, cleanup, export,
dead letters.  A thin facade: the job's rules are in ``jobs/machine.py``,
its loop in ``engine/driver.py``, the read models in ``views.py``.  Job state
lives in Redis; candles and labels in ClickHouse; chunks run on Dask.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import logs, views
from .config import Settings
from .connections import connections
from .engine.lease import dead_local_owner, new_owner
from .errors import DependencyError, GpubackfillError, InvalidInput, InvalidTransition
from .granularity import GRANULARITIES, parse_granularity, parse_instrument
from .jobs.machine import FINAL_JOB_STATES
from .jobs.plan import ALL, EVER, JobSpec, make_spec, mark_fresh, parse_names, parse_time, plan_job
from .labels import halo, resolve
from .storage.clickhouse_store import IngestReport, SeriesKey
from .storage.redis import now_ms
from .storage.telemetry import Telemetry
from .times import iso

Progress = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    job_id: str
    status: str
    seconds: float
    candles: int


class BackfillService:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.store, self.state = connections(self.settings)
        self.telemetry = Telemetry(self.state)
        self._schema_ready = False

    # -- storage -----------------------------------------------------------

    def init(self) -> None:
        self.store.init_schema()
        self._schema_ready = True

    def _ready(self) -> None:
        if not self._schema_ready:
            self.init()

    def ingest(self, path: str | Path, instrument: str, granularity: str,
               tz: str | None = None, *, columns: str | None = None, date_format: str | None = None,
               sep: str | None = None, decimal: str | None = None, max_rejects: str | int = 0,
               rejects: str | Path | None = None) -> IngestReport:
        """Ingest a CSV or Parquet file, in batches (``gpubackfill.ingest``).
        ``columns``, ``date_format``, ``sep``, ``decimal``: how to read it
        (``candles.files.Layout``); more rejected rows than ``max_rejects``
        (a count or ``"P%"``) and nothing is written; ``rejects``: a CSV file
        for every rejected row."""
        from . import ingest as ingest_mod
        from .candles.files import CandleFile, Layout

        key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity))
        layout = Layout.parse(columns, date_format, sep, decimal)
        limit = ingest_mod.RejectLimit.parse(max_rejects)
        ingest_mod.check_rejects_path(rejects, path)
        # a missing file or column is refused before the store opens
        CandleFile(path, tz=tz, layout=layout)
        self._ready()
        return ingest_mod.ingest_file(self.store, key, path, tz, layout=layout, max_rejects=limit,
                                      rejects=rejects)

    def ingest_table(self, key: SeriesKey, table: pa.Table, *, max_rejects: str | int = 0,
                     rejects: str | Path | None = None) -> IngestReport:
        from . import ingest as ingest_mod

        self._ready()
        return ingest_mod.ingest_table(self.store, key, table, max_rejects=max_rejects, rejects=rejects)

    # -- sources -------------------------------------------------------------

    def add_source(self, name: str, relation: str, maps: list[str], **options: Any):
        """Check a source's definition against its relation and register it
        (``sources.catalog.define``); nothing is registered when it fails."""
        from .sources import catalog

        self._ready()
        src = catalog.define(self.store, name, relation, maps, **options)
        self.store.add_source(src)
        return src

    def sources(self) -> list:
        self._ready()
        return self.store.sources()

    def source(self, name: str):
        self._ready()
        return self.store.source(name)

    def check_source(self, name: str) -> list[dict]:
        """Each stored series of the source with its problems (``catalog.check``)."""
        from .sources import catalog

        return catalog.check(self.store, self.source(name))

    def remove_source(self, name: str) -> None:
        """Forget a source; the labels computed from it stay."""
        self._ready()
        self.store.remove_source(name)

    # -- jobs --------------------------------------------------------------

    def create_job(self, instrument: str | list[str], granularity: str | list[str],
                   start: Any = None, end: Any = None, labels: list[str] | None = None,
                   params: dict | None = None, chunk_size: int | None = None,
                   workers: int | None = None, priority: str = "normal", force: bool = False,
                   backend: str | None = None, min_workers: int | None = None,
                   source: str | None = None) -> str:
        """Plan a job (``plan``) and queue it; returns its id."""
        return self._queue(*self.plan(instrument, granularity, start, end, labels, params, chunk_size,
                                      workers, priority, force, backend, min_workers, source))

    def preview_job(self, *args, **kwargs) -> dict[str, Any]:
        """What ``create_job`` with these arguments would queue, queueing
        nothing (the console's dry run): series, skipped, chunks, candles,
        the label set and whether it exists already."""
        spec, chunks, skipped = self.plan(*args, **kwargs)
        exists = self.store.rows(f"SELECT count() FROM {self.store.db}.label_sets "
                                 "WHERE label_set = {s:String}", {"s": spec.label_set})[0][0] > 0
        return {"series": [f"{i} {g}" for i, g in spec.series], "skipped": skipped, "chunks": len(chunks),
                "candles": sum(seg.rows for chunk in chunks for seg in chunk), "label_set": spec.label_set,
                "label_set_exists": exists, "start": iso(spec.start_ms), "end": iso(spec.end_ms),
                "chunk_size": spec.chunk_size}

    def plan(self, instrument: str | list[str], granularity: str | list[str],
             start: Any = None, end: Any = None, labels: list[str] | None = None,
             params: dict | None = None, chunk_size: int | None = None,
             workers: int | None = None, priority: str = "normal", force: bool = False,
             backend: str | None = None, min_workers: int | None = None,
             source: str | None = None) -> tuple[JobSpec, list, list[str]]:
        """Plan a job over every (instrument, granularity) pair asked for that
        has candles in the range: (spec, chunks, series skipped).  Pairs
        without candles there are skipped (``status`` lists them) unless no
        pair has any; an instrument without a single candle in the store is
        an error (a typo, most likely).  Without ``start`` (``end``) the job
        begins at the first (ends after the last) candle of its series.
        ``source``: read the candles from that registered source (``sources/``),
        not the built-in table."""
        workers = self.settings.max_workers if workers is None else workers
        spec = make_spec(instrument, granularity, start, end, labels, params,
                         self.settings.chunk_size_for(workers) if chunk_size is None else chunk_size,
                         workers, priority, force,
                         backend or self.settings.backend, min_workers)
        from .backends import select

        select(spec.backend)  # a backend that cannot run here fails now, not per chunk
        self._ready()
        src = self.store.source(source).name if source else ""
        spec = replace(spec, source=src)
        if src:  # a granularity the source neither stores nor derives is refused by name
            for g in spec.granularities:
                self.store.source(src).relation_for(g)
        if spec.instruments == (ALL,):
            present = {(i, g): n for i, g, n in self.store.instruments(src)}
        else:  # counted from the index: no scan of the whole candle table
            counts = self.store.range_counts("candles", [SeriesKey(i, g, src) for i, g in spec.series],
                                             *EVER)
            present = {(k.instrument, k.granularity): n for k, n in counts.items() if n}
        if spec.instruments == (ALL,):
            wanted = [k for k in sorted(present) if k[1] in spec.granularities]
            if not wanted:
                grans = sorted({g for _, g in present}, key=list(GRANULARITIES).index)
                raise InvalidInput(f"no instrument has {','.join(spec.granularities)} candles "
                                   f"(the store has {','.join(grans) or 'none yet'}: see `gpubackfill series`)")
        else:
            wanted = list(spec.series)
            self._refuse_unknown(wanted, present, src)
        keys = [SeriesKey(i, g, src) for i, g in wanted if (i, g) in present]
        if start is None or end is None:
            spec = self._narrow(spec, keys, start is None, end is None)
        in_range = self.store.range_counts("candles", keys, spec.start_ms, spec.end_ms)
        if chunk_size is None and not self.settings.chunk_size:
            spec = replace(spec, chunk_size=self.settings.chunk_size_for(spec.workers, sum(in_range.values())))
        back, ahead = halo(spec.resolved())
        planned = self.store.chunk_plan(keys, spec.start_ms, spec.end_ms, spec.chunk_size, back, ahead,
                                        in_range)
        runs = {k: planned[k] for k in keys if planned.get(k)}
        if not runs:
            if len(wanted) == 1:
                key = SeriesKey(*wanted[0], src)
                _, first, last = self.store.series_summary(key)
                raise InvalidInput(f"no {key.instrument} {key.granularity} candles from "
                                   f"{_day(spec.start_ms)} to {_day(spec.end_ms - 1)}; the series has "
                                   f"{iso(first)} to {iso(last)}")
            raise InvalidInput(f"none of {', '.join(f'{i} {g}' for i, g in wanted)} has candles from "
                               f"{_day(spec.start_ms)} to {_day(spec.end_ms - 1)}")
        skipped = [f"{i} {g}" for i, g in wanted if SeriesKey(i, g, src) not in runs]
        chosen = [k for k in keys if k in runs]
        spec = spec.with_series((k.instrument, k.granularity) for k in chosen)
        chunks = plan_job([runs[k] for k in chosen], spec.chunk_size)
        return spec, chunks, skipped

    def _refuse_unknown(self, wanted: list[tuple[str, str]], present: dict, source: str = "") -> None:
        """An error naming the series asked for that have no candles at all:
        a lone series without them, or an instrument without a candle at any
        granularity.  A pair whose instrument has candles at another
        granularity is skipped by the caller: a universe may be sparse."""
        absent = [k for k in wanted if k not in present]
        if not absent:
            return
        if len(wanted) > 1:
            insts = {i for i, _ in absent} - {i for i, _ in present}
            grans = ([g for g in GRANULARITIES if self.store.source(source).serves(g)] if source
                     else list(GRANULARITIES))
            anywhere = self.store.range_counts(
                "candles", [SeriesKey(i, g, source) for i in sorted(insts) for g in grans], *EVER)
            insts -= {k.instrument for k, n in anywhere.items() if n}
            absent = [k for k in absent if k[0] in insts]
            if not absent:
                return
        stored = [f"{i} {g}" for i, g, _ in self.store.instruments(source)]
        near = list(dict.fromkeys(m for i, g in absent
                                  for m in difflib.get_close_matches(f"{i} {g}", stored, n=5)))[:5]
        hint = (f"similar: {', '.join(near)}" if near
                else f"the store has {len(stored)} series: see `gpubackfill series`" if stored
                else "the store has no candles yet")
        where = f"source {source}" if source else "the store"
        raise InvalidInput(f"no candles for {', '.join(f'{i} {g}' for i, g in absent)} in {where} "
                           f"(ingest some first; {hint})")

    def _narrow(self, spec: JobSpec, keys: list[SeriesKey], from_first: bool, to_last: bool) -> JobSpec:
        """A range left open: from the first candle of the job's series, up
        to and including the last (the whole history of each)."""
        spans = self.store.series_spans(keys).values()
        if not spans:
            return spec
        start_ms = min(lo for lo, _ in spans) if from_first else spec.start_ms
        end_ms = max(hi for _, hi in spans) + 1 if to_last else spec.end_ms
        return replace(spec, start_ms=start_ms, end_ms=max(end_ms, start_ms + 1))

    def _queue(self, spec: JobSpec, chunks: list, skipped: list[str]) -> str:
        self.store.ensure_label_table(spec.resolved())
        job_id = uuid.uuid4().hex[:12]
        # One active job per series set, range and label set: a second
        # identical start (a double click, a retried deploy) must not do the
        # work twice.
        digest = hashlib.blake2b(json.dumps([sorted(spec.series), spec.start_ms, spec.end_ms,
                                             spec.label_set, spec.kind]
                                            + ([spec.source] if spec.source else [])).encode(),
                                 digest_size=10).hexdigest()
        other = self.state.claim_spec(digest, job_id)
        if other is not None:
            raise InvalidTransition(f"an identical job {other[0]} is already {other[1]}: follow it "
                                    f"with `gpubackfill monitor {other[0]}`")
        self.state.create_job(job_id, {**spec.as_fields(), "spec_key": self.state.spec_key(digest),
                                       "skipped": skipped}, chunks)
        logs.job_event(job_id, "queued", "create", f"{len(chunks)} chunks",
                       instrument=spec.instrument, granularity=spec.granularity, priority=spec.priority)
        return job_id

    def writer_conflict(self, job_id: str, job: dict | None = None) -> tuple[str, str, str] | None:
        """The running job (id, status, series) that writes the same labels
        over a range this job covers, if any: this job must wait for it."""
        job = job or self.state.job(job_id)
        return self.state.claim_writer(job["label_set"], job_id, _ranges(job), check=True)

    def _start_running(self, job_id: str, job: dict) -> str:
        """Move the job to running and claim its writes, in one step
        (``RedisState.start_writing``); refused while another job writes an
        overlapping range of the same labels."""
        status, writer = self.state.start_writing(job_id, job["label_set"], _ranges(job))
        if writer is not None:
            raise InvalidTransition(
                f"job {writer[0]} ({writer[1]}) is writing these labels for {writer[2]} over an "
                f"overlapping range; job {job_id} stays {job['status']}: run it when that one has "
                f"finished (`gpubackfill monitor {writer[0]}`), or cancel that one "
                f"(`gpubackfill cancel {writer[0]}`)")
        return status

    def flush_records(self, job_id: str, job: dict) -> int:
        """Insert the manifest rows that the job's chunks recorded in Redis
        into ClickHouse, in batches; returns how many.  Until then a written
        chunk has no row there: a re-run recomputes it rather than finding
        it in the cache, which costs time, never correctness (freshness is
        decided from the label rows themselves)."""
        series = _keys(job)
        done = 0
        while recs := self.state.records(job_id):
            self.store.write_records(job["label_set"], [(series[r[0]], *r[1:], job_id) for r in recs])
            self.state.drop_records(job_id, len(recs))
            done += len(recs)
        return done

    def _mark_fresh(self, job_id: str, job: dict) -> None:
        """Flag the pending chunks whose ranges hold no label rows now: under
        the job's writer claim they stay so until the chunk writes, so its
        first claim writes without asking (``Segment.fresh``).  Done at
        every start of ``execute``, from the rows themselves, so a chunk
        that a dead run wrote in part is never taken for fresh."""
        states = self.state.chunk_states(job_id)
        pending = {i for i, st in states.items() if st == "pending"}
        if not pending:
            return
        plan = self.state.plan(job_id)
        keys = _keys(job)
        spans = self.store.label_spans(job["label_set"], keys, int(job["start_ms"]), int(job["end_ms"]))
        chunks = [plan[i] for i in sorted(pending)]
        marked = mark_fresh(chunks, {n: spans[k] for n, k in enumerate(keys) if k in spans})
        self.state.set_plan_entries(job_id, {i: m for i, old, m in zip(sorted(pending), chunks, marked)
                                             if m != old})

    def plan_update(self, instrument: str | list[str] | None = None,
                    granularity: str | list[str] | None = None, chunk_size: int | None = None,
                    workers: int | None = None, priority: str = "normal",
                    backend: str | None = None) -> list[dict[str, Any]]:
        """Queue the daily update: for every label set already computed on
        the series asked for (default: all), one job over what is missing
        or stale (``coverage``).  Returns one entry per job queued ([] when
        everything is current): job id, label set, series, stale and new
        chunk counts."""
        from . import coverage

        self._ready()
        size = (self.settings.chunk_size_for(self.settings.max_workers if workers is None else workers)
                if chunk_size is None else chunk_size)
        insts = set(parse_names(instrument, "instrument")) - {ALL}
        grans = {parse_granularity(g) for g in parse_names(granularity, "granularity")}
        insts = {parse_instrument(i) for i in insts}
        plans = coverage.update_plans(self.store, size, insts or None, grans or None)
        if not plans:
            return []
        out = []
        for plan in plans:
            spec = make_spec([i for i, _ in plan.series], [g for _, g in plan.series],
                             _ms_text(plan.start_ms), _ms_text(plan.end_ms), plan.labels, plan.params,
                             size, self.settings.max_workers if workers is None else workers,
                             priority, False, backend or self.settings.backend)
            spec = replace(spec.with_series(plan.series), start_ms=plan.start_ms,
                           end_ms=plan.end_ms, kind="update")
            out.append({"job_id": self._queue(spec, plan.chunks, []), "label_set": plan.set_id,
                        "series": len(plan.series), "stale_chunks": plan.stale,
                        "new_chunks": plan.new, "chunks": len(plan.chunks)})
        return out

    def series_overview(self, instrument: str | None = None, granularity: str | None = None) -> list:
        """The store's series with their candles and label-set coverage
        (``coverage.SeriesCoverage``)."""
        from . import coverage

        self._ready()
        insts = {parse_instrument(i) for i in parse_names(instrument, "instrument")} - {ALL}
        grans = {parse_granularity(g) for g in parse_names(granularity, "granularity")}
        return coverage.overview(self.store, insts or None, grans or None)

    def execute(self, job_id: str, progress: Progress | None = None,
                scheduler: str | None = None, stop: threading.Event | None = None) -> RunResult:
        """Run (or resume) a job until it is settled, cancelled or stopped.

        Pause takes effect between chunks: running chunks finish, then this
        waits until the job is resumed or cancelled.  ``stop`` (set by a
        signal handler) interrupts: no new chunks, running ones finish, the
        job becomes ``interrupted`` and ``execute`` resumes it later.
        """
        job = self.state.job(job_id)
        owner = new_owner()
        lease_ms = self.settings.lease_seconds * 1000
        self._become_driver(job_id, owner, lease_ms)
        t0 = time.perf_counter()
        try:
            status = job["status"]
            if status in ("queued", "interrupted", "failed", "paused", "completed_with_errors"):
                status = self._start_running(job_id, job)
                if job["status"] in ("completed_with_errors", "failed"):
                    self.state.requeue_failed(job_id)
                logs.job_event(job_id, status, "execute", owner=owner)
            elif status != "running":
                raise InvalidTransition(f"job {job_id} is {status}; nothing to execute")
            else:  # a driver taking over: the job holds its claim while it runs
                self.state.claim_writer(job["label_set"], job_id, _ranges(job))
            self.state.expire_leases(job_id)
            self.flush_records(job_id, job)  # left by a driver that died
            self._mark_fresh(job_id, job)
            if self.state.settle(job_id) == "running":
                status = self._drive(job_id, job, owner, lease_ms, progress, scheduler, stop)
        finally:
            try:
                self.state.release_driver(job_id, owner)
            except DependencyError:
                pass  # Redis gone: the driver key expires by itself
        final = self._after_outage(lambda: self.state.job(job_id), stop)
        if final["status"] != "running":
            logs.job_event(job_id, final["status"], "settled", candles_done=final["candles_done"],
                           errors=final["errors"])
        if final["status"] in FINAL_JOB_STATES:
            # Finished jobs live REDIS_TTL seconds.
            self._after_outage(lambda: self.state.expire_job(job_id), stop)
        return RunResult(job_id, final["status"], time.perf_counter() - t0, final["candles_done"])

    def _after_outage(self, fn: Callable[[], Any], stop: threading.Event | None) -> Any:
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
                stop.wait(min(30.0, self.settings.retry_base_seconds * 2 ** min(attempt, 5)))

    def _become_driver(self, job_id: str, owner: str, lease_ms: int) -> None:
        """Take the job's driver lock, or take it over from a driver process
        on this host that died (a SIGKILL leaves the lock until it expires)."""
        other = self.state.acquire_driver(job_id, owner, lease_ms)
        if not other:
            return
        if dead_local_owner(other) and self.state.take_over_driver(job_id, other, owner, lease_ms):
            returned = self.state.release_owner(job_id, other)
            self.state.note(job_id, "takeover", f"driver {other} is gone; {returned} leased "
                                                f"chunk(s) returned to the queue")
            return
        left = self.state.driver_ttl_ms(job_id)
        raise InvalidTransition(
            f"job {job_id} is already being run by {other}; if that process is stuck, its lock "
            f"runs out in {max(left, 0) / 1000:.0f}s and `gpubackfill execute {job_id}` takes over")

    def _drive(self, job_id: str, job: dict, owner: str, lease_ms: int,
               progress: Progress | None, scheduler: str | None,
               stop: threading.Event | None) -> str:
        from .backends import select
        from .engine.cluster import open_cluster
        from .engine.driver import Driver
        from .engine.task import default_numba_threads

        workers = int(job["workers"])
        chosen = select(job["backend"])
        self.state.set_fields(job_id, backend_used=chosen.name, backend_reason=chosen.reason)
        self._check_finer_series(job_id, job)
        self.state.note(job_id, "backend", f"{chosen.name}: {chosen.reason}")
        base = dict(job_id=job_id, labels=job["labels"], params=job["params"],
                    label_set=job["label_set"], force=job["force"], backend=chosen.name,
                    max_attempts=self.settings.max_retries + 1,
                    numba_threads=default_numba_threads(workers), source=job.get("source") or "")
        series = job.get("series") or [[job["instrument"], job["granularity"]]]
        with open_cluster(self.settings, workers, int(job.get("min_workers") or workers),
                          scheduler, gpu=chosen.name == "cuda") as cluster:
            self.state.set_fields(job_id, cluster=cluster.kind, dashboard=cluster.dashboard or "")
            driver = Driver(self.state, self.settings, job_id, owner, lease_ms, base, series,
                            cluster, workers, stop, flush=lambda: self.flush_records(job_id, job))
            try:
                return driver.run((lambda: progress(self.status(job_id))) if progress else None)
            except BaseException:
                driver.abandon()  # a second signal or a crash: hand the chunks back
                raise
            finally:
                try:
                    self.flush_records(job_id, job)
                except DependencyError:
                    pass  # kept in Redis: the next execute inserts them

    def _check_finer_series(self, job_id: str, job: dict) -> None:
        """Say once, at the start, when the finer candles a label reads are missing."""
        try:
            resolved = resolve(job["labels"], job["params"])
        except InvalidInput:
            return  # each chunk reports a bad label spec as its error, with the job's other errors
        from .labels import finer_candles

        need = finer_candles(resolved)
        if need is None:
            return
        series = job.get("series") or [[job["instrument"], job["granularity"]]]
        for inst, _ in series:
            if not self.store.has_series(SeriesKey(inst, need.granularity, job.get("source") or "")):
                why = (f"no {need.granularity} candles for {inst}: {need.without} (after "
                       f"ingesting them, a new run recomputes the chunks they change)")
                logs.log.warning(why, extra={"job_id": job_id})
                self.state.note(job_id, need.param, why)

    def start(self, *args, detach: bool = False, progress: Progress | None = None,
              scheduler: str | None = None, stop: threading.Event | None = None, **kwargs) -> str:
        job_id = self.create_job(*args, **kwargs)
        if not detach:
            self.execute(job_id, progress=progress, scheduler=scheduler, stop=stop)
        return job_id

    def pause(self, job_id: str) -> str:
        return self._transition(job_id, "pause")

    def resume(self, job_id: str) -> str:
        return self._transition(job_id, "resume")

    def cancel(self, job_id: str) -> str:
        return self._transition(job_id, "cancel")

    def _transition(self, job_id: str, event: str) -> str:
        status = self.state.transition(job_id, event)
        logs.job_event(job_id, status, event)
        return status

    # -- dead letters ------------------------------------------------------

    def dead_letters(self, job_id: str | None = None) -> list[dict[str, Any]]:
        if job_id is not None:
            self.state.job(job_id)  # unknown job: a clear error, not an empty list
        return self.state.dead_letters(job_id)

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        entry = self.state.dead_letter(entry_id)
        try:
            entry["error"] = self.state.chunk_errors(entry["job_id"]).get(entry["chunk"], "")
        except DependencyError:
            raise
        except InvalidInput:
            entry["error"] = ""
        return entry

    def _select_dead(self, ids: list[str] | None, job_id: str | None) -> list[dict[str, Any]]:
        if ids:
            return [self.state.dead_letter(i) for i in ids]
        return self.dead_letters(job_id)

    def retry_dead_letters(self, ids: list[str] | None = None, job_id: str | None = None
                           ) -> dict[str, int]:
        """Re-queue dead-lettered chunks (after a fix); chunks per job.  The
        jobs then need ``execute`` (unless a driver is running them)."""
        out: dict[str, int] = {}
        for e in self._select_dead(ids, job_id):
            if self.state.requeue(e["job_id"], e["chunk"]):
                out[e["job_id"]] = out.get(e["job_id"], 0) + 1
        return out

    def purge_dead_letters(self, ids: list[str] | None = None, job_id: str | None = None) -> int:
        """Forget entries; their chunks stay failed (the job stays completed_with_errors)."""
        return self.state.purge_dead_letters([e["id"] for e in self._select_dead(ids, job_id)])

    # -- views (views.py) ----------------------------------------------------

    def job_view(self, job_id: str) -> views.JobStatus:
        return views.job_status(self.state, self.telemetry, job_id)

    def job_views(self, status: str | None = None) -> list[views.JobStatus]:
        return views.list_jobs(self.state, self.telemetry, status)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.job_view(job_id).model_dump()

    # -- for the scheduler and the API (serve) --------------------------------

    def job_ids(self) -> list[str]:
        return self.state.job_ids()

    def job_record(self, job_id: str) -> dict[str, Any]:
        """The job's stored fields (spec, status, counters)."""
        return self.state.job(job_id)

    def driver_alive(self, job_id: str) -> bool:
        """A live process holds the job's driver lock.  A lock whose owner is a
        process of this host that has died does not count: ``execute`` takes
        such a job over at once."""
        owner = self.state.driver_owner(job_id)
        return owner is not None and not dead_local_owner(owner)

    def mark_scheduled(self, job_id: str) -> None:
        self.state.set_fields(job_id, scheduled="1")

    def check_dependencies(self) -> tuple[dict[str, Any], list[str]]:
        """Redis, ClickHouse and the circuit breakers as ``/health`` reports
        them: (checks, reasons it is not ready)."""
        checks: dict[str, Any] = {}
        reasons: list[str] = []
        try:
            self.state.ping()
            checks["redis"] = {"ok": True, "where": self.state.where}
        except DependencyError as exc:
            checks["redis"] = {"ok": False, "error": str(exc)}
            reasons.append(f"redis: {exc}")
        try:
            self.store.rows("SELECT 1")
            checks["clickhouse"] = {"ok": True}
        except GpubackfillError as exc:
            checks["clickhouse"] = {"ok": False, "error": str(exc)}
            reasons.append(f"clickhouse: {exc}")
        if checks["redis"]["ok"]:
            try:
                breakers = self.telemetry.breakers()
                open_ = sorted(n for n, b in breakers.items() if b["state"] == "open")
                checks["breakers"] = {"ok": not open_,
                                      "states": {n: b["state"] for n, b in breakers.items()}}
                if open_:
                    reasons.append(f"circuit breaker open: {', '.join(open_)}")
            except GpubackfillError as exc:
                checks["breakers"] = {"ok": False, "error": str(exc)}
                reasons.append(f"breakers: {exc}")
        return checks, reasons

    def list_jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        return [j.model_dump() for j in views.list_jobs(self.state, self.telemetry, status)]

    def metrics(self) -> dict[str, Any]:
        return views.metrics(self.state, self.telemetry)

    def cleanup(self, older_than_days: float, status: str | None = None) -> list[str]:
        """Remove finished jobs older than the cutoff from Redis (labels stay)."""
        if not 0 <= older_than_days < float("inf"):  # nan fails this too
            raise InvalidInput(f"--older-than must be a number of days >= 0, got {older_than_days}")
        if status is not None and status not in FINAL_JOB_STATES:
            raise InvalidInput(f"--status must be one of {', '.join(sorted(FINAL_JOB_STATES))}")
        cutoff = now_ms() - older_than_days * 86_400_000
        removed = []
        for job_id in self.state.job_ids():
            try:
                job = self.state.job(job_id)
            except InvalidInput:
                self.state.delete_job(job_id)
                self.telemetry.forget_job(job_id)
                continue
            if job["status"] not in FINAL_JOB_STATES:
                continue
            if status is not None and job["status"] != status:
                continue
            if (job.get("finished") or job["updated"]) <= cutoff:
                self.state.delete_job(job_id)
                self.telemetry.forget_job(job_id)
                removed.append(job_id)
        return removed

    def label_sets(self, instrument: str | None = None, granularity: str | None = None) -> list:
        """Computed label sets (``export.LabelSet``) with rows, per series."""
        from . import export as export_mod

        self._ready()
        sets = export_mod.sets_of(self.store)
        if instrument:
            sets = [s for s in sets if s.series[0] == parse_instrument(instrument)]
        if granularity:
            sets = [s for s in sets if s.series[1] == parse_granularity(granularity)]
        return sets

    def export_parts(self, instrument: str | list[str], granularity: str | list[str],
                     labels: list[str] | None = None, params: dict | None = None,
                     start: Any = None, end: Any = None, set_id: str | None = None,
                     with_candles: bool = False, with_t1: bool = False):
        """A label set as it is exported: (Arrow tables in ts order, the
        provenance metadata, the ``LabelSet``).  The tables are produced
        lazily, one query per batch; ``export_file`` writes them, and the
        store holder streams them to a CLI in another process (``serve/holder.py``).
        Several instruments or granularities (lists, comma-separated, or
        ``*``) make a panel: one long table with ``instrument`` and
        ``granularity`` first (``export.choose_panel``).  ``with_t1``: each
        row's event end ``t1`` after ``ts`` (``export.check_t1``)."""
        from . import export as export_mod

        insts = parse_names(instrument, "instrument")
        grans = [parse_granularity(g) for g in parse_names(granularity, "granularity")]
        if not insts or not grans:
            raise InvalidInput("no instrument or no granularity given")
        start_ms = parse_time(start, "start date", False) if start else None
        end_ms = parse_time(end, "end date", True) if end else None
        self._ready()
        if len(insts) == 1 and insts[0] != ALL and len(grans) == 1:
            key = SeriesKey(parse_instrument(insts[0]), grans[0])
            chosen = export_mod.choose(export_mod.sets_of(self.store, key), key, labels, params, set_id)
            if with_t1:
                export_mod.check_t1(chosen)
            parts = export_mod.batches(self.store, key, chosen, start_ms, end_ms, with_candles,
                                       with_t1=with_t1)
            return parts, export_mod.provenance([key], [chosen], start_ms, end_ms, with_candles,
                                                with_t1), chosen
        panel = export_mod.choose_panel(self.store, insts, grans, labels, params, set_id)
        keys, sets = [k for k, _ in panel], [s for _, s in panel]
        if with_t1:
            export_mod.check_t1(sets[0])
        meta = export_mod.provenance(keys, sets, start_ms, end_ms, with_candles, with_t1)
        parts = export_mod.panel_batches(self.store, panel, start_ms, end_ms, with_candles,
                                         with_t1=with_t1)
        return parts, meta, replace(sets[0], set_id=meta[b"label_set"].decode())

    def export(self, instrument: str | list[str], granularity: str | list[str],
               labels: list[str] | None = None,
               params: dict | None = None, start: Any = None, end: Any = None,
               set_id: str | None = None, with_candles: bool = False) -> pa.Table:
        """A computed label set as one Arrow table, ``ts`` in int64 ms as
        ``compute_labels`` returns it (files get a UTC timestamp); the
        provenance is in the schema metadata.  ``export_file`` streams large
        sets to disk instead."""
        parts, meta, _ = self.export_parts(instrument, granularity, labels, params, start, end,
                                            set_id, with_candles)
        table = pa.concat_tables(list(parts))
        table = table.set_column(table.column_names.index("ts"), "ts", table.column("ts").cast(pa.int64()))
        return table.replace_schema_metadata(meta)

    def export_file(self, path: str | Path, instrument: str | list[str], granularity: str | list[str],
                    labels: list[str] | None = None, params: dict | None = None,
                    start: Any = None, end: Any = None, set_id: str | None = None,
                    with_candles: bool = False, with_t1: bool = False) -> tuple[int, int, str]:
        """Stream a label set to ``path`` (.parquet or .csv); (rows, columns, set id)."""
        from . import export as export_mod

        parts, meta, chosen = self.export_parts(instrument, granularity, labels, params, start,
                                                 end, set_id, with_candles, with_t1)
        rows, cols = export_mod.write(path, parts, meta)
        return rows, cols, chosen.set_id


def _ranges(job: dict) -> list[tuple[str, str, int, int]]:
    return [(i, g, int(job["start_ms"]), int(job["end_ms"])) for i, g in job["series"]]


def _ms_text(ms: int) -> str:
    return iso(ms) or "1970-01-01T00:00:00Z"


def _day(ms: int) -> str:
    """A date for a range bound on a day boundary (the end given as a date
    includes its day), else the full time."""
    whole = ms % 86_400_000 in (0, 86_399_999)
    return (iso(ms) or "")[:10] if whole else (iso(ms) or "")


def _keys(job: dict) -> list[SeriesKey]:
    """The job's series, of its source ("" where it reads the built-in table)."""
    return [SeriesKey(i, g, job.get("source") or "") for i, g in job["series"]]
