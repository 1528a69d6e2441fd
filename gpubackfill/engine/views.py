"""Read models: what a job, its series and the deployment look like from outside.

One typed definition (pydantic) shared by the CLI (``status``, ``monitor``,
``metrics``), the REST API's response models and the Prometheus collector.
Every figure comes from counters kept by the Redis scripts (the job's in
its hash, each series' in the job's series hash), so a status read costs
a few small Redis calls whatever the size of the job: no chunk's state is
read one by one, and a job's series are listed a page at a time
(``series_offset``, ``series_limit``; ``series_count`` says how many
there are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..common.times import iso
from ..errors import CATEGORIES, InvalidInput
from ..jobs import eta as eta_mod
from ..jobs.machine import FINAL_JOB_STATES, series_status
from ..labels import counters
from ..storage.redis import RedisState, now_ms
from ..storage.resilience import BREAKERS, breaker_severity
from ..storage.telemetry import Telemetry
from .lease import dead_local_owner


class ChunkCounts(BaseModel):
    pending: int
    leased: int
    done: int
    failed: int


class SeriesStatus(BaseModel):
    """One (instrument, granularity) of a job."""
    instrument: str
    granularity: str
    status: str   # pending, running, completed, completed_with_errors, failed; or, started
                  # and its job stopped: paused, interrupted, cancelled, queued
    chunks_done: int
    chunks_total: int
    chunks_failed: int
    candles_done: int
    candles_total: int
    errors: int


class DriverInfo(BaseModel):
    owner: str
    gone: bool
    why: str = ""


class EtaInfo(BaseModel):
    low_s: float | None
    high_s: float | None
    confidence: float  # 0..1
    concurrency: float
    chunks_seen: int


class JobStatus(BaseModel):
    # The labels' counters (``LabelSpec.counters``) are fields of their own:
    # those of the labels built in are declared below, for the API's
    # schema; one a label added later declares comes as an extra field.
    model_config = ConfigDict(extra="allow")

    job_id: str
    kind: str
    source: str = ""  # the registered source read; "": the built-in candles table
    status: str
    instrument: str
    granularity: str
    # A page of the job's series (``series_offset`` on, at most the limit
    # asked for): a job of 100k series is not listed whole in one view.
    series: list[SeriesStatus]
    series_count: int
    series_offset: int
    skipped: list[str]   # series asked for that had no candles in the range
    start: str | None
    end: str | None
    labels: list[str]
    label_set: str
    priority: str
    workers: int
    backend: str
    backend_used: str
    backend_reason: str
    chunks: ChunkCounts
    chunks_total: int
    candles_done: int
    candles_total: int
    progress: float
    rows_written: int
    cache_hits: int
    # Candles done because their labels were already there, computed from
    # the same candles: counted in candles_done, not in the throughput.
    candles_skipped: int
    errors: int
    elapsed_s: float
    throughput_per_min: float
    recent_rate_per_min: float
    eta_s: float | None
    driver: DriverInfo
    eta: EtaInfo
    created: str | None
    started: str | None
    finished: str | None
    cluster: str
    dashboard: str
    last_errors: dict[str, str]
    # The built-in labels' counters (LabelSpec.counters), declared so that the
    # API's schema names them; a label added later shows its own as extra fields.
    bars_resolved: int
    bars_ambiguous: int
    interrupted_because: str
    # Seconds per chunk step, summed over the job's recorded chunks (load,
    # fingerprint, cache check, validate, compute, write, and their total).
    stages: dict[str, float]


SERIES_PAGE = 1_000  # series a job view lists unless asked for another page
SERIES_MAX = 10_000  # the most series one request to the API lists


def series_names(job: dict[str, Any]) -> list[list[str]]:
    return job.get("series") or [[job.get("instrument", ""), job.get("granularity", "")]]


def series_page(state: RedisState, job_id: str, job: dict[str, Any], job_status: str,
                offset: int = 0, limit: int = SERIES_PAGE) -> list[SeriesStatus]:
    """Series ``offset`` .. ``offset + limit - 1`` of the job, in its order."""
    if offset < 0 or limit < 0:
        raise InvalidInput(f"series_offset and series_limit must be >= 0, got {offset} and {limit}")
    names = series_names(job)[offset:offset + limit]
    out = []
    for (inst, gran), c in zip(names, state.series_counters(job_id, offset, len(names))):
        out.append(SeriesStatus(
            instrument=inst, granularity=gran,
            status=series_status(c["chunks_total"], c["chunks_done"], c["chunks_failed"], c["leased"],
                                 job_status),
            chunks_done=c["chunks_done"], chunks_total=c["chunks_total"],
            chunks_failed=c["chunks_failed"], candles_done=c["candles_done"],
            candles_total=c["candles_total"], errors=c["errors"]))
    return out


def driver_info(state: RedisState, job_id: str, status: str) -> DriverInfo:
    """Who drives a running job, and whether that process is gone (a kill
    -9 leaves the job "running" with nobody running it).  A paused job may
    have no driver by design (paused while queued)."""
    if status != "running":
        return DriverInfo(owner="", gone=False)
    owner = state.driver_owner(job_id) or ""
    gone = not owner or dead_local_owner(owner)
    why = "" if not gone else (f"its driver {owner} has exited" if owner
                               else "no process holds its driver lock")
    return DriverInfo(owner=owner, gone=gone, why=why)


def _last_note(state: RedisState, job_id: str, event: str) -> str:
    for e in reversed(state.events(job_id)):
        if e.get("event") == event:
            return e.get("note") or ""
    return ""


def _estimate(state: RedisState, job_id: str, job: dict, remaining: int,
              samples: list) -> eta_mod.Estimate:
    workers = int(job.get("workers") or 1)
    if not samples:
        # Chunks recorded without finishing times (e.g. by an older
        # driver): assume every worker was busy.
        t, samples = 0.0, []
        for d, n in state.durations(job_id):
            t += d / workers
            samples.append((int(t * 1000), d, n))
    return eta_mod.estimate(samples, remaining, workers)


def job_status(state: RedisState, telemetry: Telemetry, job_id: str, series_offset: int = 0,
               series_limit: int = SERIES_PAGE) -> JobStatus:
    # The ETA samples before the counters: a chunk's sample and its counts
    # are recorded in one step, so in this order every sample read is
    # counted as done (the other way round, a chunk that finished between
    # the two reads showed one sample more than chunks done).
    samples = telemetry.samples(job_id)
    job = state.job(job_id)
    total_chunks = int(job.get("chunks_total") or 0)
    done_c, failed_c = int(job.get("chunks_done") or 0), int(job.get("chunks_failed") or 0)
    leased = int(job.get("chunks_leased") or 0)
    total = int(job.get("candles_total") or 0)
    done = int(job.get("candles_done") or 0)
    skipped = int(job.get("candles_skipped") or 0)
    status = job["status"]
    est = _estimate(state, job_id, job, total - done, samples)
    driver = driver_info(state, job_id, status)
    end = job.get("finished") or now_ms()
    elapsed = (end - job["started"]) / 1000 if job.get("started") else 0.0
    final = status in FINAL_JOB_STATES
    # Only a job that runs has time left: a paused, interrupted or queued
    # one waits for someone, and a finished one needs none.
    if status == "running" and not driver.gone:
        eta_s, eta_low, eta_high = est.eta_s, est.eta_low_s, est.eta_high_s
    else:
        eta_s = 0.0 if final and done >= total else None
        eta_low = eta_high = eta_s
    return JobStatus(
        job_id=job_id, kind=job.get("kind", "backfill"), source=job.get("source") or "", status=status,
        instrument=job["instrument"], granularity=job["granularity"],
        series=series_page(state, job_id, job, status, series_offset, series_limit),
        series_count=len(series_names(job)), series_offset=series_offset,
        skipped=list(job.get("skipped") or []),
        start=iso(job["start_ms"]), end=iso(job["end_ms"]), labels=job["labels"],
        label_set=job["label_set"], priority=job.get("priority", "normal"),
        workers=int(job.get("workers") or 0), backend=job.get("backend", "cpu"),
        backend_used=job.get("backend_used", ""), backend_reason=job.get("backend_reason", ""),
        chunks=ChunkCounts(pending=max(total_chunks - done_c - failed_c - leased, 0), leased=leased,
                           done=done_c, failed=failed_c),
        chunks_total=total_chunks, candles_done=done, candles_total=total,
        progress=(done / total) if total else (1.0 if final else 0.0),
        rows_written=int(job.get("rows_written") or 0), cache_hits=int(job.get("cache_hits") or 0),
        candles_skipped=skipped, errors=int(job.get("errors") or 0), elapsed_s=round(elapsed, 3),
        throughput_per_min=((done - skipped) / elapsed * 60) if elapsed > 0 else 0.0,
        recent_rate_per_min=est.rate_per_s * 60,
        eta_s=eta_s,
        driver=driver,
        eta=EtaInfo(low_s=eta_low, high_s=eta_high, confidence=est.confidence,
                    concurrency=round(est.concurrency, 3), chunks_seen=est.samples),
        created=iso(job["created"]), started=iso(job.get("started")),
        finished=iso(job.get("finished")), cluster=job.get("cluster", ""),
        # The dashboard is the driver's cluster's: gone once the job stops running.
        dashboard=job.get("dashboard", "") if status == "running" and not driver.gone else "",
        last_errors={str(k): v for k, v in state.chunk_error_heads(job_id, 5).items()},
        interrupted_because=_last_note(state, job_id, "interrupt") if status == "interrupted" else "",
        stages={k.split(":", 1)[1]: round(float(v), 6) for k, v in job.items()
                if k.startswith("stage:")},
        **{c.status: int(job.get(c.field) or 0) for c in counters()},
    )


def list_jobs(state: RedisState, telemetry: Telemetry, status: str | None = None,
              series_limit: int = SERIES_PAGE) -> list[JobStatus]:
    out = []
    for job_id in state.job_ids():
        try:
            s = job_status(state, telemetry, job_id, series_limit=series_limit)
        except InvalidInput:
            continue  # expired between listing and reading
        if status is None or s.status == status:
            out.append(s)
    return out




def metrics(state: RedisState, telemetry: Telemetry) -> dict[str, Any]:
    """Figures over every job in Redis (not this process's counters).

    Totals (``totals``) are monotonic counters kept in Redis by whichever
    process ran the chunks; the rest is the current state of the jobs.
    """
    # Job-level figures only: no job's series are listed.
    jobs = list_jobs(state, telemetry, series_limit=0)
    by_status: dict[str, int] = {}
    for j in jobs:
        by_status[j.status] = by_status.get(j.status, 0) + 1
    running = [j for j in jobs if j.status == "running"]
    unfinished = [j for j in jobs if j.status not in FINAL_JOB_STATES]
    chunks_done = sum(j.chunks.done for j in jobs)
    cache_hits = sum(j.cache_hits for j in jobs)
    errors = sum(j.errors for j in jobs)
    attempts = chunks_done + errors
    run_done = sum(j.chunks.done for j in running)
    run_errors = sum(j.errors for j in running)
    durations = [d for j in jobs for d, _ in state.durations(j.job_id)]
    recent = [d for j in running for d, _ in state.durations(j.job_id)[-20:]]
    counters = state.counters()
    breakers = telemetry.breakers()
    for name, b in BREAKERS.snapshot().items():
        # This process's breaker is the freshest view of its own calls;
        # another process's published open breaker still counts.
        st = str(b.get("state", "closed")).replace("-", "_")
        if breaker_severity(st) >= breaker_severity(breakers.get(name, {"state": "closed"})["state"]):
            breakers[name] = {"state": st, "failures": int(b.get("failures", 0) or 0)}
    failed = sum(j.chunks.failed for j in jobs)
    stats = telemetry.stats()
    hist = {k.split(":", 1)[1]: int(v) for k, v in stats.items() if k.startswith("bucket:")}
    return {
        "jobs": len(jobs), "jobs_by_status": by_status,
        "candles_processed": sum(j.candles_done for j in jobs),
        "rows_written": sum(j.rows_written for j in jobs),
        "chunks_done": chunks_done, "chunks_failed": failed,
        "chunks_pending": sum(j.chunks.pending for j in unfinished),
        "jobs_queued": by_status.get("queued", 0),
        "active_chunks": sum(j.chunks.leased for j in running),
        "active_workers": sum(j.workers for j in running),
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
        "throughput_per_min": sum(j.recent_rate_per_min for j in running),
        "running_jobs_measured": sum(1 for j in running if j.eta.chunks_seen >= 3),
        # A job's instrument field names all of its instruments, comma-separated.
        "instruments": sorted({i for j in jobs for i in j.instrument.split(",") if i}),
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
        "dead_letters": telemetry.dead_letters(),
        "reliability": telemetry.counters(),
        "alerts": telemetry.alerts(),
        "dashboards": sorted({j.dashboard for j in running if j.dashboard}),
    }
