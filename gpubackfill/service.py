"""BackfillService: the one object the CLI (and the REST API) drive.

Operations: init, ingest, start, execute, pause, resume, cancel, status,
list_jobs, metrics, cleanup, export.  Job state lives in Redis; candles and
labels in ClickHouse; chunks run on Dask (``executor``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import pyarrow as pa

from . import cadence, candles as candles_mod
from . import eta as eta_mod
from . import logs
from .chunk import ChunkTask, connections, default_numba_threads, finer_series, run_chunk
from .config import Settings
from .errors import CATEGORIES, DependencyError, InvalidInput, InvalidTransition
from .resilience import BREAKERS
from .executor import open_cluster
from .granularity import parse_granularity, parse_instrument
from .labels import resolve
from .planner import make_spec, parse_time, plan_chunks
from .watchdog import chunk_deadline
from .state.machine import FINAL_JOB_STATES
from .state.redis_store import now_ms
from .state.telemetry import Telemetry
from .store import IngestReport, SeriesKey

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
               tz: str | None = None) -> IngestReport:
        from .candle_files import read_candles

        key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity))
        table = read_candles(path, tz=tz)
        return self.ingest_table(key, table)

    def ingest_table(self, key: SeriesKey, table: pa.Table) -> IngestReport:
        self._ready()
        if "volume" not in table.column_names:
            table = table.append_column("volume", pa.array(np.zeros(table.num_rows)))
        table = table.select(["ts", "open", "high", "low", "close", "volume"])
        table, order = cadence.sort_by_time(table)  # newest-first exports are common
        cadence.check_step(table.column("ts").to_numpy(), key.granularity)
        codes = candles_mod.defect_codes(candles_mod.to_series(table))
        report = self.store.ingest(key, table, codes, candles_mod.describe)
        if order is None:
            return report
        return replace(report, sorted=True,
                       rejected=sorted((int(order[row]), ts, why) for row, ts, why in report.rejected))

    # -- jobs --------------------------------------------------------------

    def create_job(self, instrument: str, granularity: str, start: Any, end: Any,
                   labels: list[str] | None = None, params: dict | None = None,
                   chunk_size: int | None = None, workers: int | None = None,
                   priority: str = "normal", force: bool = False,
                   backend: str | None = None, min_workers: int | None = None) -> str:
        """Plan a job and queue it; returns its id."""
        spec = make_spec(instrument, granularity, start, end, labels, params,
                         self.settings.chunk_size if chunk_size is None else chunk_size,
                         self.settings.max_workers if workers is None else workers, priority, force,
                         backend or self.settings.backend, min_workers)
        from .backends import select

        select(spec.backend)  # a backend that cannot run here fails now, not per chunk
        self._ready()
        key = SeriesKey(spec.instrument, spec.granularity)
        n, _, _ = self.store.series_summary(key)
        if n == 0:
            known = ", ".join(f"{i} {g}" for i, g, _ in self.store.instruments()) or "none"
            raise InvalidInput(f"no candles for {spec.instrument} {spec.granularity} "
                               f"(ingest some first; series present: {known})")
        self.store.ensure_label_table(spec.resolved())
        chunks = plan_chunks(self.store.chunk_starts(key, spec.start_ms, spec.end_ms, spec.chunk_size),
                             spec.end_ms)
        if not chunks:  # a job of 0 candles "completing" would hide a wrong range
            _, first, last = self.store.series_summary(key)
            raise InvalidInput(f"no {spec.instrument} {spec.granularity} candles from "
                               f"{_day(spec.start_ms)} to {_day(spec.end_ms - 1)}; the series has "
                               f"{_iso(first)} to {_iso(last)}")
        job_id = uuid.uuid4().hex[:12]
        # One active job per series, range and label set: a second identical
        # start (a double click, a retried deploy) must not do the work twice.
        digest = hashlib.blake2b(json.dumps([spec.instrument, spec.granularity, spec.start_ms,
                                             spec.end_ms, spec.label_set]).encode(),
                                 digest_size=10).hexdigest()
        other = self.state.claim_spec(digest, job_id)
        if other is not None:
            raise InvalidTransition(f"an identical job {other[0]} is already {other[1]}: follow it "
                                    f"with `gpubackfill monitor {other[0]}`")
        self.state.create_job(job_id, {**spec.as_fields(), "spec_key": self.state.spec_key(digest)},
                              chunks)
        logs.job_event(job_id, "queued", "create", f"{len(chunks)} chunks",
                       instrument=spec.instrument, granularity=spec.granularity, priority=spec.priority)
        return job_id

    def execute(self, job_id: str, progress: Progress | None = None,
                scheduler: str | None = None, stop: threading.Event | None = None) -> RunResult:
        """Run (or resume) a job until it is settled, cancelled or stopped.

        Pause takes effect between chunks: running chunks finish, then this
        waits until the job is resumed or cancelled.  ``stop`` (set by a
        signal handler) interrupts: no new chunks, running ones finish, the
        job becomes ``interrupted`` and ``execute`` resumes it later.
        """
        job = self.state.job(job_id)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        lease_ms = self.settings.lease_seconds * 1000
        self._become_driver(job_id, owner, lease_ms)
        t0 = time.perf_counter()
        try:
            status = job["status"]
            if status in ("queued", "interrupted", "failed", "paused", "completed_with_errors"):
                if status in ("completed_with_errors", "failed"):
                    self.state.requeue_failed(job_id)
                status = self.state.transition(job_id, "execute")
                logs.job_event(job_id, status, "execute", owner=owner)
            elif status != "running":
                raise InvalidTransition(f"job {job_id} is {status}; nothing to execute")
            self.state.expire_leases(job_id)
            if job["chunks_total"] == 0:
                status = self.state.transition(job_id, "complete", "no candles in range")
            else:
                status = self._drive(job_id, job, owner, lease_ms, progress, scheduler, stop)
        finally:
            try:
                self.state.release_driver(job_id, owner)
            except DependencyError:
                pass  # Redis gone: the driver key expires by itself
        final = self.state.job(job_id)
        if final["status"] != "running":
            logs.job_event(job_id, final["status"], "settled", candles_done=final["candles_done"],
                           errors=final["errors"])
        if final["status"] in FINAL_JOB_STATES:
            self.state.expire_job(job_id)  # finished jobs live REDIS_TTL seconds
        return RunResult(job_id, final["status"], time.perf_counter() - t0, final["candles_done"])

    def _become_driver(self, job_id: str, owner: str, lease_ms: int) -> None:
        """Take the job's driver lock, or take it over from a driver process
        on this host that died (a SIGKILL leaves the lock until it expires)."""
        other = self.state.acquire_driver(job_id, owner, lease_ms)
        if not other:
            return
        if _dead_local_owner(other) and self.state.take_over_driver(job_id, other, owner, lease_ms):
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
        workers = int(job["workers"])
        from .backends import select

        chosen = select(job["backend"])
        self.state.set_fields(job_id, backend_used=chosen.name, backend_reason=chosen.reason)
        self._check_finer_series(job_id, job)
        self.state.note(job_id, "backend", f"{chosen.name}: {chosen.reason}")
        base = dict(job_id=job_id, instrument=job["instrument"], granularity=job["granularity"],
                    labels=job["labels"], params=job["params"], label_set=job["label_set"],
                    force=job["force"], backend=chosen.name,
                    max_attempts=self.settings.max_retries + 1,
                    numba_threads=default_numba_threads(workers))
        with open_cluster(self.settings, workers, int(job.get("min_workers") or workers),
                          scheduler, gpu=chosen.name == "cuda") as cluster:
            self.state.set_fields(job_id, cluster=cluster.kind, dashboard=cluster.dashboard or "")
            driver = _Driver(self, job_id, owner, lease_ms, base, cluster, workers, stop)
            try:
                return driver.run(progress)
            except BaseException:
                driver.abandon()  # a second signal or a crash: hand the chunks back
                raise

    def _check_finer_series(self, job_id: str, job: dict) -> None:
        """Say once, at the start, when resolve_with names a series with no candles."""
        try:
            resolved = resolve(job["labels"], job["params"])
        except InvalidInput:
            return  # each chunk reports a bad label spec as its error, with the job's other errors
        finer = finer_series(resolved, SeriesKey(job["instrument"], job["granularity"]))
        if finer is None:
            return
        if not self.store.has_series(finer):
            why = (f"no {finer.granularity} candles for {finer.instrument}: ambiguous bars fall "
                   f"back to the tie rule (after ingesting them, a new run recomputes the "
                   f"chunks they change)")
            logs.log.warning(why, extra={"job_id": job_id})
            self.state.note(job_id, "resolve_with", why)

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

    def _observe_chunk(self, job_id: str, job: dict, idx: int, result: dict[str, Any]) -> None:
        """Metrics and logs for one chunk outcome; never fails the job."""
        failed = not result.get("ok") and not result.get("split") and not result.get("stale")
        try:
            if result.get("ok"):
                self.telemetry.record_chunk(job_id, job, float(result.get("duration", 0.0)),
                                            int(result.get("candles", 0)), int(result.get("rows", 0)),
                                            bool(result.get("cache_hit")))
            elif failed:
                self.telemetry.record_failure()
        except DependencyError as exc:
            logs.log.warning("could not record chunk metrics: %s", exc,
                             extra={"job_id": job_id, "chunk": idx})
        if failed:
            logs.chunk_failed(job_id, idx, str(result.get("error", "")), bool(result.get("retry")),
                              category=result.get("category", ""))

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

    # -- views -------------------------------------------------------------

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.state.job(job_id)
        states = self.state.chunk_states(job_id)
        counts = {s: 0 for s in ("pending", "leased", "done", "failed")}
        for s in states.values():
            counts[s] = counts.get(s, 0) + 1
        total = job["candles_total"] or 0
        done = job["candles_done"] or 0
        est = self._eta(job_id, job, total - done)
        driver = self._driver_view(job_id, job["status"])
        end = job.get("finished") or now_ms()
        elapsed = (end - job["started"]) / 1000 if job.get("started") else 0.0
        return {
            "job_id": job_id, "status": job["status"], "instrument": job["instrument"],
            "granularity": job["granularity"], "start": _iso(job["start_ms"]),
            "end": _iso(job["end_ms"]), "labels": job["labels"], "label_set": job["label_set"],
            "priority": job.get("priority", "normal"), "workers": int(job.get("workers") or 0),
            "backend": job.get("backend", "cpu"),
            "backend_used": job.get("backend_used", ""), "backend_reason": job.get("backend_reason", ""),
            "chunks": counts, "chunks_total": job["chunks_total"],
            "candles_done": done, "candles_total": total,
            "progress": (done / total) if total else (1.0 if job["status"] in FINAL_JOB_STATES else 0.0),
            "rows_written": job["rows_written"], "cache_hits": job["cache_hits"],
            "errors": job["errors"], "elapsed_s": round(elapsed, 3),
            "throughput_per_min": (done / elapsed * 60) if elapsed > 0 else 0.0,
            "recent_rate_per_min": est.rate_per_s * 60,
            "eta_s": (None if driver["gone"] else est.eta_s if job["status"] not in FINAL_JOB_STATES
                      else (0.0 if done >= total else None)),
            "driver": driver,
            "eta": {"low_s": est.eta_low_s, "high_s": est.eta_high_s, "confidence": est.confidence,
                    "concurrency": round(est.concurrency, 3), "chunks_seen": est.samples},
            "created": _iso(job["created"]), "started": _iso(job.get("started")),
            "finished": _iso(job.get("finished")), "cluster": job.get("cluster", ""),
            "dashboard": job.get("dashboard", ""),
            "last_errors": {str(k): v.splitlines()[0] for k, v in
                            list(self.state.chunk_errors(job_id).items())[:5]},
            # enhanced_triple_barrier with resolve_with: bars decided by the
            # finer candles, and bars left to the tie rule (no finer data, or
            # still ambiguous at the finer level).
            "bars_resolved": int(job.get("tb_resolved") or 0),
            "bars_ambiguous": int(job.get("tb_ambiguous") or 0),
            "interrupted_because": (self._last_note(job_id, "interrupt")
                                    if job["status"] == "interrupted" else ""),
        }

    def _driver_view(self, job_id: str, status: str) -> dict[str, Any]:
        """Who drives a running job, and whether that process is gone (a
        kill -9 leaves the job "running" with nobody running it).  A paused
        job may have no driver by design (paused while queued)."""
        if status != "running":
            return {"owner": "", "gone": False}
        owner = self.state.driver_owner(job_id) or ""
        gone = not owner or _dead_local_owner(owner)
        return {"owner": owner, "gone": gone,
                "why": ("" if not gone else f"its driver {owner} has exited" if owner
                        else "no process holds its driver lock")}

    def _last_note(self, job_id: str, event: str) -> str:
        for e in reversed(self.state.events(job_id)):
            if e.get("event") == event:
                return e.get("note") or ""
        return ""

    def _eta(self, job_id: str, job: dict, remaining: int) -> eta_mod.Estimate:
        workers = int(job.get("workers") or 1)
        samples = self.telemetry.samples(job_id)
        if not samples:
            # Chunks recorded without finishing times (e.g. by an older
            # driver): assume every worker was busy.
            t, samples = 0.0, []
            for d, n in self.state.durations(job_id):
                t += d / workers
                samples.append((int(t * 1000), d, n))
        return eta_mod.estimate(samples, remaining, workers)

    def list_jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        out = []
        for job_id in self.state.job_ids():
            try:
                s = self.status(job_id)
            except InvalidInput:
                continue  # expired between listing and reading
            if status is None or s["status"] == status:
                out.append(s)
        return out

    def metrics(self) -> dict[str, Any]:
        """Figures over every job in Redis (not this process's counters).

        Totals (``totals``) are monotonic counters kept in Redis by whichever
        process ran the chunks; the rest is the current state of the jobs.
        """
        jobs = self.list_jobs()
        by_status: dict[str, int] = {}
        for j in jobs:
            by_status[j["status"]] = by_status.get(j["status"], 0) + 1
        running = [j for j in jobs if j["status"] == "running"]
        unfinished = [j for j in jobs if j["status"] not in FINAL_JOB_STATES]
        chunks_done = sum(j["chunks"]["done"] for j in jobs)
        cache_hits = sum(j["cache_hits"] for j in jobs)
        errors = sum(j["errors"] for j in jobs)
        attempts = chunks_done + errors
        run_done = sum(j["chunks"]["done"] for j in running)
        run_errors = sum(j["errors"] for j in running)
        durations = [d for j in jobs for d, _ in self.state.durations(j["job_id"])]
        recent = [d for j in running for d, _ in self.state.durations(j["job_id"])[-20:]]
        counters = self.state.counters()
        breakers = self.telemetry.breakers()
        worse = {"closed": 0, "half_open": 1, "open": 2}
        for name, b in BREAKERS.snapshot().items():
            # This process's breaker is the freshest view of its own calls;
            # another process's published open breaker still counts.
            state = str(b.get("state", "closed")).replace("-", "_")
            if worse.get(state, 0) >= worse[breakers.get(name, {"state": "closed"})["state"]]:
                breakers[name] = {"state": state, "failures": int(b.get("failures", 0) or 0)}
        failed = sum(j["chunks"]["failed"] for j in jobs)
        stats = self.telemetry.stats()
        hist = {k.split(":", 1)[1]: int(v) for k, v in stats.items() if k.startswith("bucket:")}
        return {
            "jobs": len(jobs), "jobs_by_status": by_status,
            "candles_processed": sum(j["candles_done"] for j in jobs),
            "rows_written": sum(j["rows_written"] for j in jobs),
            "chunks_done": chunks_done, "chunks_failed": failed,
            "chunks_pending": sum(j["chunks"]["pending"] for j in unfinished),
            "jobs_queued": by_status.get("queued", 0),
            "active_chunks": sum(j["chunks"]["leased"] for j in running),
            "active_workers": sum(j["workers"] for j in running),
            "cache_hit_rate": (cache_hits / chunks_done) if chunks_done else 0.0,
            "error_rate": (failed / (chunks_done + failed)) if chunks_done + failed else 0.0,
            "attempt_error_rate": (errors / attempts) if attempts else 0.0,
            # Over running jobs only (the alert's figure): a finished job's
            # old failures should not keep an alert firing.
            "running_error_rate": (run_errors / (run_done + run_errors)) if run_done + run_errors else 0.0,
            "errors_by_category": {c: counters.get(f"errors:{c}", 0) for c in CATEGORIES},
            "retries_by_category": {c: counters.get(f"retries:{c}", 0) for c in CATEGORIES},
            "chunk_seconds_p50": float(np.median(durations)) if durations else 0.0,
            "chunk_seconds_max": max(durations) if durations else 0.0,
            "recent_chunk_seconds_p50": float(np.median(recent)) if recent else 0.0,
            "throughput_per_min": sum(j["recent_rate_per_min"] for j in running),
            "running_jobs_measured": sum(1 for j in running if j["eta"]["chunks_seen"] >= 3),
            "instruments": sorted({j["instrument"] for j in jobs}),
            "totals": {
                "chunks": int(stats.get("chunks", 0)), "candles": int(stats.get("candles", 0)),
                "rows": int(stats.get("rows", 0)), "cache_hits": int(stats.get("cache_hits", 0)),
                "chunk_failures": int(stats.get("chunk_failures", 0)),
                "labels": {k.split(":", 1)[1]: int(v) for k, v in stats.items() if k.startswith("labels:")},
                "instruments": {k.split(":", 1)[1]: int(v) for k, v in stats.items()
                                if k.startswith("instrument:")},
                "chunk_seconds": {"buckets": hist, "sum": stats.get("chunk_seconds_sum", 0.0),
                                  "count": int(stats.get("chunk_seconds_count", 0))},
            },
            "breakers": breakers,
            "breakers_open": sorted(n for n, b in breakers.items() if b["state"] == "open"),
            "dead_letters": self.telemetry.dead_letters(),
            "reliability": self.telemetry.counters(),
            "alerts": self.telemetry.alerts(),
            "dashboards": sorted({j["dashboard"] for j in running if j["dashboard"]}),
        }

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

    def export_parts(self, instrument: str, granularity: str, labels: list[str] | None = None,
                     params: dict | None = None, start: Any = None, end: Any = None,
                     set_id: str | None = None, with_candles: bool = False):
        """A label set as it is exported: (Arrow tables in ts order, the
        provenance metadata, the ``LabelSet``).  The tables are produced
        lazily, one query per batch; ``export_file`` writes them, and the
        store holder streams them to a CLI in another process (``holder.py``)."""
        from . import export as export_mod

        key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity))
        start_ms = parse_time(start, "start date", False) if start else None
        end_ms = parse_time(end, "end date", True) if end else None
        self._ready()
        chosen = export_mod.choose(export_mod.sets_of(self.store, key), key, labels, params, set_id)
        parts = export_mod.batches(self.store, key, chosen, start_ms, end_ms, with_candles)
        return parts, export_mod.provenance(key, chosen, start_ms, end_ms, with_candles), chosen

    def export(self, instrument: str, granularity: str, labels: list[str] | None = None,
               params: dict | None = None, start: Any = None, end: Any = None,
               set_id: str | None = None, with_candles: bool = False) -> pa.Table:
        """A computed label set as one Arrow table, ``ts`` in int64 ms as
        ``compute_labels`` returns it (files get a UTC timestamp); the
        provenance is in the schema metadata.  ``export_file`` streams large
        sets to disk instead."""
        parts, meta, _ = self.export_parts(instrument, granularity, labels, params, start, end,
                                            set_id, with_candles)
        table = pa.concat_tables(list(parts))
        table = table.set_column(0, "ts", table.column("ts").cast(pa.int64()))
        return table.replace_schema_metadata(meta)

    def export_file(self, path: str | Path, instrument: str, granularity: str,
                    labels: list[str] | None = None, params: dict | None = None,
                    start: Any = None, end: Any = None, set_id: str | None = None,
                    with_candles: bool = False) -> tuple[int, int, str]:
        """Stream a label set to ``path`` (.parquet or .csv); (rows, columns, set id)."""
        from . import export as export_mod

        parts, meta, chosen = self.export_parts(instrument, granularity, labels, params, start,
                                                 end, set_id, with_candles)
        rows, cols = export_mod.write(path, parts, meta)
        return rows, cols, chosen.set_id


class _Driver:
    """The loop that hands a job's chunks to the cluster and collects them.

    Redis is the record: this only claims, submits and reacts to what the
    chunks report (an outage to wait out, a job-level failure, a lost worker).
    """

    def __init__(self, svc: BackfillService, job_id: str, owner: str, lease_ms: int,
                 base: dict, cluster, workers: int, stop: threading.Event | None):
        self.svc, self.state, self.settings = svc, svc.state, svc.settings
        self.job_id, self.owner, self.lease_ms = job_id, owner, lease_ms
        self.base, self.cluster, self.workers = base, cluster, workers
        self.job = {"instrument": base["instrument"], "labels": base["labels"]}
        self.stop = stop or threading.Event()
        self.in_flight: dict[Any, tuple[int, int]] = {}
        self.hold_until = 0.0          # no claims before this (a dependency is down)
        self.stop_deadline: float | None = None
        self.last_upkeep = time.monotonic()
        # Futures whose chunk was taken back (deadline or lease) while their
        # thread still runs: each holds a worker slot until it returns.
        self.stuck: dict[Any, int] = {}
        self.timeout_s = self._chunk_timeout()

    def run(self, progress: Progress | None) -> str:
        outage = 0
        while True:
            try:
                status = self._step()
                outage = 0
            except DependencyError as exc:
                # Redis (or ClickHouse) away: wait with backoff rather than
                # spin; running chunks keep going and retry their own records.
                outage += 1
                if self.stop.is_set():
                    raise
                self._wait(min(self.settings.retry_base_seconds * 2 ** min(outage, 5),
                               getattr(exc, "retry_after", 0) or 30.0))
                continue
            if status is not None:
                return status
            if progress:
                progress(self.svc.status(self.job_id))

    def _step(self) -> str | None:
        job_id = self.job_id
        status = self.state.job(job_id)["status"]
        if self.stop.is_set():
            if status == "running":
                status = self.state.transition(job_id, "interrupt", "signal")
                logs.job_event(job_id, status, "interrupt", "stop requested")
            if status == "paused" and not self.in_flight:
                return status  # stays paused; nothing to wait for
            if self.stop_deadline is None:
                self.stop_deadline = time.monotonic() + self.settings.shutdown_timeout
        stuck = self.wedged() if self.stuck else []
        if stuck:
            chunks = ", ".join(map(str, stuck))
            self.abandon(f"all {self.workers} worker slots are stuck (chunks {chunks}; "
                         f"stacks in the job's events); resume in a new process")
            return self.state.job(job_id)["status"]
        drained = self._claim(status)
        if self.in_flight:
            for fut in _wait_some(list(self.in_flight), 0.5):
                self._collect(fut)
            if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                self.abandon("shutdown timeout")
        else:
            if status in FINAL_JOB_STATES or status == "interrupted":
                return status
            if status == "running" and drained:
                # Everything claimed has settled; leases of vanished workers return.
                if self.state.expire_leases(job_id) == 0:
                    settled = self.state.job(job_id)["status"]
                    if settled != "running":
                        return settled
                    self._wait(0.2)
            elif status == "paused" or time.monotonic() < self.hold_until:
                self._wait(0.2)
        self._upkeep()
        return None

    def _claim(self, status: str) -> bool:
        """Submit chunks while the job runs and the cluster has room; True when none are left."""
        if self.stop.is_set() or time.monotonic() < self.hold_until:
            return False
        while status == "running" and len(self.in_flight) < 2 * self.workers:
            claimed = self.state.claim(self.job_id, self.owner, self.lease_ms)
            if claimed == "empty":
                return True
            if isinstance(claimed, str):
                return False
            idx, token, (start, end, rows) = claimed
            task = ChunkTask(index=idx, token=token, start_ms=start, end_ms=end, rows=rows,
                             timeout_s=self.timeout_s, **self.base)
            fut = self.cluster.client.submit(run_chunk, self.settings, task, pure=False,
                                             key=f"chunk-{self.job_id}-{idx}-{token}")
            self.in_flight[fut] = (idx, token)
        return False

    def _collect(self, fut) -> None:
        idx, token = self.in_flight.pop(fut)
        if fut.status == "error":  # the task never reported: its worker died or it crashed
            exc = fut.exception()
            logs.chunk_failed(self.job_id, idx, f"worker lost: {type(exc).__name__}: {exc}", True)
            self.state.fail(self.job_id, idx, token, f"worker lost: {type(exc).__name__}: {exc}",
                            self.base["max_attempts"], retryable=True, category="resource",
                            detail={"digest": "worker-lost"})
            self.state.note(self.job_id, "worker_error", f"chunk {idx}: {exc}")
            return
        if fut.status == "cancelled":
            return
        result = fut.result()
        self.svc._observe_chunk(self.job_id, self.job, idx, result)
        if result.get("outage"):
            self.hold_until = max(self.hold_until, time.monotonic() + float(result["retry_after"]))
        if result.get("fail_job"):
            status = self.state.job(self.job_id)["status"]
            if status in ("running", "paused"):
                self.state.transition(self.job_id, "fail", f"chunk {idx}: {result['error']}"[:500])

    def _wait(self, seconds: float) -> None:
        self.stop.wait(seconds)  # a signal cuts the wait short

    def _upkeep(self) -> None:
        # Often enough to see a chunk taken back by its deadline soon after,
        # and never less often than the driver lock needs renewing.
        if time.monotonic() - self.last_upkeep > min(self.lease_ms / 3000, 5.0):
            self.state.renew_driver(self.job_id, self.owner, self.lease_ms)
            self.state.expire_leases(self.job_id)
            self._forget_expired()
            self.timeout_s = self._chunk_timeout()
            self.last_upkeep = time.monotonic()

    def _chunk_timeout(self) -> float:
        s = self.settings
        if s.chunk_timeout > 0:
            return s.chunk_timeout
        return chunk_deadline(0, s.chunk_timeout_floor,
                              [d for d, _ in self.state.durations(self.job_id)])

    def _forget_expired(self) -> None:
        """Stop waiting for chunks that were taken back (past their deadline,
        or their lease ran out: a hung or lost worker).  They are queued
        again, and the stale run's write is fenced off."""
        for fut in [f for f in self.stuck if f.done()]:
            del self.stuck[fut]
        if not any(not f.done() for f in self.in_flight):
            return
        leases = self.state.leases(self.job_id)
        for fut, (idx, token) in list(self.in_flight.items()):
            if not fut.done() and leases.get(idx) != token:
                # Not cancelled: a running task cannot be stopped anyway, and
                # its future is how we see the slot come free again.
                self.in_flight.pop(fut)
                self.stuck[fut] = idx
                self.state.note(self.job_id, "lease_expired", f"chunk {idx} (token {token})")

    def wedged(self) -> list[int]:
        """The chunks that hold every worker slot, each past its deadline
        and never returned: nothing can run in this cluster any more ([]
        while a slot is free).  A forgotten future may also be one that never
        started, its lease having run out in Dask's queue: only a timeout
        recorded for the chunk shows that it ran."""
        if len(self.stuck) < self.workers:
            return []
        errors = self.state.chunk_errors(self.job_id)
        timed_out = [i for i in self.stuck.values() if errors.get(i, "").startswith("timeout:")]
        return sorted(timed_out) if len(timed_out) >= self.workers else []

    def abandon(self, why: str = "driver stopped") -> None:
        """Give running chunks back to the queue (their late writes are fenced)."""
        for fut, (idx, token) in list(self.in_flight.items()):
            fut.cancel()
            try:
                self.state.release(self.job_id, idx, token)
            except DependencyError:
                pass  # the lease expires instead
        self.in_flight.clear()
        try:
            if self.state.job(self.job_id)["status"] == "running":
                self.state.transition(self.job_id, "interrupt", why)
        except (DependencyError, InvalidInput):
            pass


def _dead_local_owner(owner: str) -> bool:
    """True when ``owner`` (host:pid:nonce) names a process of this host that is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not psutil.pid_exists(int(pid))


def _wait_some(futures: list, timeout: float) -> list:
    """Futures finished within ``timeout`` (as soon as one is).  Polled:
    ``distributed.wait`` would need this client to be the process default."""
    deadline = time.monotonic() + timeout
    while True:
        done = [f for f in futures if f.done()]
        if done or time.monotonic() >= deadline:
            return done
        time.sleep(0.005)


def _day(ms: int) -> str:
    """A date for a range bound on a day boundary (the end given as a date
    includes its day), else the full time."""
    whole = ms % 86_400_000 in (0, 86_399_999)
    return _iso(ms)[:10] if whole else _iso(ms)


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
