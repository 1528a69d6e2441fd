"""BackfillService: the one object the CLI (and the REST API) drive.

Operations: init, ingest, start, execute, pause, resume, cancel, status,
list_jobs, metrics, cleanup, export.  Job state lives in Redis; candles and
labels in ClickHouse; chunks run on Dask (``executor``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from . import candles as candles_mod
from . import eta as eta_mod
from . import logs
from .chunk import ChunkTask, connections, default_numba_threads, run_chunk
from .config import Settings
from .errors import DependencyError, InvalidInput, InvalidTransition
from .executor import open_cluster
from .granularity import parse_granularity, parse_instrument
from .labels import resolve
from .planner import make_spec, parse_time, plan_chunks
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
        codes = candles_mod.defect_codes(candles_mod.to_series(table))
        return self.store.ingest(key, table, codes, candles_mod.describe)

    # -- jobs --------------------------------------------------------------

    def create_job(self, instrument: str, granularity: str, start: Any, end: Any,
                   labels: list[str] | None = None, params: dict | None = None,
                   chunk_size: int | None = None, workers: int | None = None,
                   priority: str = "normal", force: bool = False,
                   backend: str | None = None, min_workers: int | None = None) -> str:
        """Plan a job and queue it; returns its id."""
        spec = make_spec(instrument, granularity, start, end, labels, params,
                         chunk_size or self.settings.chunk_size,
                         workers or self.settings.max_workers, priority, force,
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
        job_id = uuid.uuid4().hex[:12]
        self.state.create_job(job_id, spec.as_fields(), chunks)
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
        other = self.state.acquire_driver(job_id, owner, lease_ms)
        if other:
            raise InvalidTransition(f"job {job_id} is already being run by {other}")
        t0 = time.perf_counter()
        try:
            status = job["status"]
            if status in ("queued", "interrupted", "failed", "paused", "completed_with_errors"):
                if status == "completed_with_errors":
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
            self.state.release_driver(job_id, owner)
        final = self.state.job(job_id)
        if final["status"] != "running":
            logs.job_event(job_id, final["status"], "settled", candles_done=final["candles_done"],
                           errors=final["errors"])
        if final["status"] in FINAL_JOB_STATES:
            self.state.expire_job(job_id)  # finished jobs live REDIS_TTL seconds
        return RunResult(job_id, final["status"], time.perf_counter() - t0, final["candles_done"])

    def _drive(self, job_id: str, job: dict, owner: str, lease_ms: int,
               progress: Progress | None, scheduler: str | None,
               stop: threading.Event | None) -> str:
        workers = int(job["workers"])
        from .backends import select

        chosen = select(job["backend"])
        self.state.set_fields(job_id, backend_used=chosen.name, backend_reason=chosen.reason)
        self.state.note(job_id, "backend", f"{chosen.name}: {chosen.reason}")
        base = dict(job_id=job_id, instrument=job["instrument"], granularity=job["granularity"],
                    labels=job["labels"], params=job["params"], label_set=job["label_set"],
                    force=job["force"], backend=chosen.name,
                    max_attempts=self.settings.max_retries + 1,
                    numba_threads=default_numba_threads(workers))
        plan = self.state.plan(job_id)
        with open_cluster(self.settings, workers, int(job.get("min_workers") or workers),
                          scheduler, gpu=chosen.name == "cuda") as cluster:
            self.state.set_fields(job_id, cluster=cluster.kind, dashboard=cluster.dashboard or "")
            in_flight: dict[Any, int] = {}
            last_renew = time.monotonic()
            while True:
                status = self.state.job(job_id)["status"]
                if stop is not None and stop.is_set() and status == "running":
                    status = self.state.transition(job_id, "interrupt", "signal")
                    logs.job_event(job_id, status, "interrupt", "stop requested")
                if stop is not None and stop.is_set() and status == "paused" and not in_flight:
                    return status  # stays paused; nothing to wait for
                drained = False
                while status == "running" and len(in_flight) < 2 * workers:
                    claimed = self.state.claim(job_id, owner, lease_ms)
                    if claimed == "empty":
                        drained = True
                        break
                    if isinstance(claimed, str):
                        status = claimed
                        break
                    idx, token = claimed
                    start, end, _ = plan[idx]
                    task = ChunkTask(index=idx, token=token, start_ms=start, end_ms=end, **base)
                    fut = cluster.client.submit(run_chunk, self.settings, task, pure=False,
                                                key=f"chunk-{job_id}-{idx}-{token}")
                    in_flight[fut] = idx
                if in_flight:
                    done = _wait_some(list(in_flight), 0.5)
                    for fut in done:
                        idx = in_flight.pop(fut)
                        if fut.status == "error":  # the task itself crashed (not a chunk failure)
                            self.state.release(job_id, idx)
                            self.state.note(job_id, "worker_error", f"chunk {idx}: {fut.exception()}")
                            logs.chunk_failed(job_id, idx, f"worker error: {fut.exception()}", True)
                        else:
                            self._observe_chunk(job_id, job, idx, fut.result())
                else:
                    if status in FINAL_JOB_STATES or status == "interrupted":
                        return status
                    if status == "running" and drained:
                        # Everything claimed has settled; leases of vanished workers return.
                        if self.state.expire_leases(job_id) == 0:
                            settled = self.state.job(job_id)["status"]
                            if settled != "running":
                                return settled
                            time.sleep(0.2)
                    elif status == "paused":
                        time.sleep(0.2)
                if time.monotonic() - last_renew > lease_ms / 3000:
                    self.state.renew_driver(job_id, owner, lease_ms)
                    last_renew = time.monotonic()
                if progress:
                    progress(self.status(job_id))

    def _observe_chunk(self, job_id: str, job: dict, idx: int, result: dict[str, Any]) -> None:
        """Metrics and logs for one chunk outcome; never fails the job."""
        try:
            if result.get("ok"):
                self.telemetry.record_chunk(job_id, job, float(result.get("duration", 0.0)),
                                            int(result.get("candles", 0)), int(result.get("rows", 0)),
                                            bool(result.get("cache_hit")))
            else:
                self.telemetry.record_failure()
        except DependencyError as exc:
            logs.log.warning("could not record chunk metrics: %s", exc,
                             extra={"job_id": job_id, "chunk": idx})
        if not result.get("ok"):
            logs.chunk_failed(job_id, idx, str(result.get("error", "")), bool(result.get("retry")))

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
            "eta_s": (est.eta_s if job["status"] not in FINAL_JOB_STATES
                      else (0.0 if done >= total else None)),
            "eta": {"low_s": est.eta_low_s, "high_s": est.eta_high_s, "confidence": est.confidence,
                    "concurrency": round(est.concurrency, 3), "chunks_seen": est.samples},
            "created": _iso(job["created"]), "started": _iso(job.get("started")),
            "finished": _iso(job.get("finished")), "cluster": job.get("cluster", ""),
            "dashboard": job.get("dashboard", ""),
            "last_errors": {str(k): v.splitlines()[0] for k, v in
                            list(self.state.chunk_errors(job_id).items())[:5]},
        }

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

        Totals (``*_total``) are monotonic counters kept in Redis by whichever
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
        run_done = sum(j["chunks"]["done"] for j in running)
        run_errors = sum(j["errors"] for j in running)
        durations = [d for j in jobs for d, _ in self.state.durations(j["job_id"])]
        recent = [d for j in running for d, _ in self.state.durations(j["job_id"])[-20:]]
        stats = self.telemetry.stats()
        hist = {k.split(":", 1)[1]: int(v) for k, v in stats.items() if k.startswith("bucket:")}
        breakers = self.telemetry.breakers()
        return {
            "jobs": len(jobs), "jobs_by_status": by_status,
            "candles_processed": sum(j["candles_done"] for j in jobs),
            "rows_written": sum(j["rows_written"] for j in jobs),
            "chunks_done": chunks_done, "chunks_failed": sum(j["chunks"]["failed"] for j in jobs),
            "chunks_pending": sum(j["chunks"]["pending"] for j in unfinished),
            "jobs_queued": by_status.get("queued", 0),
            "active_chunks": sum(j["chunks"]["leased"] for j in running),
            "active_workers": sum(j["workers"] for j in running),
            "cache_hit_rate": (cache_hits / chunks_done) if chunks_done else 0.0,
            "error_rate": (errors / (chunks_done + errors)) if chunks_done + errors else 0.0,
            # Over running jobs only (the alert's figure): a finished job's
            # old failures should not keep an alert firing.
            "running_error_rate": (run_errors / (run_done + run_errors)) if run_done + run_errors else 0.0,
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
        if older_than_days < 0:
            raise InvalidInput(f"--older-than must be >= 0, got {older_than_days}")
        if status is not None and status not in FINAL_JOB_STATES:
            raise InvalidInput(f"--status must be one of {', '.join(sorted(FINAL_JOB_STATES))}")
        cutoff = now_ms() - older_than_days * 86_400_000
        removed = []
        for job_id in self.state.job_ids():
            try:
                job = self.state.job(job_id)
            except InvalidInput:
                self.state.delete_job(job_id)
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

    def export(self, instrument: str, granularity: str, labels: list[str] | None,
               params: dict | None, start: Any = None, end: Any = None) -> pa.Table:
        key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity))
        resolved = resolve(labels or ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"], params)
        from .labels import label_set_id

        self._ready()
        return self.store.read_labels(
            key, label_set_id(resolved),
            parse_time(start, "start date", False) if start else None,
            parse_time(end, "end date", True) if end else None)


def _wait_some(futures: list, timeout: float) -> list:
    """Futures finished within ``timeout`` (as soon as one is).  Polled:
    ``distributed.wait`` would need this client to be the process default."""
    deadline = time.monotonic() + timeout
    while True:
        done = [f for f in futures if f.done()]
        if done or time.monotonic() >= deadline:
            return done
        time.sleep(0.005)


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
