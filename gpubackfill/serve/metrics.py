"""Prometheus exposition of the engine's figures.

Everything job-related is read from Redis at scrape time (``RedisCollector``
over ``BackfillService.metrics()``), so any process serving ``/metrics``
shows the work of every process: the CLI, other service replicas, Dask
workers.  Counters (``*_total``) and the chunk duration histogram are
monotonic totals kept in Redis (``state.telemetry``); they survive job
cleanup and restarts.  Scrape one replica (or aggregate with ``max``): each
replica exposes the same deployment-wide series.

prometheus-client's ``ProcessCollector`` adds this process's CPU, memory and
file descriptors (``gpubackfill_process_*``, read from ``/proc``: Linux only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..errors import GpubackfillError
from ..jobs.machine import ACTIVE_JOB_STATES, JOB_STATES
from ..storage.resilience import breaker_severity
from ..storage.telemetry import CATEGORIES, CHUNK_BUCKETS
from .alerts import ALERT_NAMES

if TYPE_CHECKING:
    from ..service import BackfillService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "gpubackfill_"


def _counter(name: str, doc: str, value: float | None = None, labels: list[str] | None = None):
    return CounterMetricFamily(P + name, doc, value=value if labels is None else None, labels=labels)


def _gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None):
    return GaugeMetricFamily(P + name, doc, value=value if labels is None else None, labels=labels)


def families(m: dict[str, Any], jobs: list[dict[str, Any]]) -> Iterator:
    """Metric families from ``service.metrics()`` and the job statuses."""
    t = m["totals"]
    yield _counter("candles_processed", "Candles whose labels were computed or found current.", t["candles"])
    yield _counter("chunks_processed", "Chunks finished successfully (cache hits included).", t["chunks"])
    yield _counter("label_rows_written", "Label rows written to ClickHouse.", t["rows"])
    yield _counter("cache_hits", "Chunks skipped because their labels were already computed "
                                 "from the same candles.", t["cache_hits"])
    yield _counter("chunk_failures", "Chunk attempts that failed (retried or given up).", t["chunk_failures"])
    labels = _counter("labels_computed", "Label rows computed, by label.", labels=["label"])
    for name, v in sorted(t["labels"].items()):
        labels.add_metric([name], v)
    yield labels
    inst = _counter("instrument_candles_processed", "Candles processed, by instrument.",
                    labels=["instrument"])
    for name, v in sorted(t["instruments"].items()):
        inst.add_metric([name], v)
    yield inst
    yield _gauge("instruments_processed", "Distinct instruments processed.", len(t["instruments"]))
    h = t["chunk_seconds"]
    cum, buckets = 0, []
    for b in CHUNK_BUCKETS:
        cum += h["buckets"].get(f"{b:g}", 0)
        buckets.append((f"{b:g}", cum))
    cum += h["buckets"].get("+Inf", 0)
    buckets.append(("+Inf", cum))
    yield HistogramMetricFamily(P + "chunk_duration_seconds",
                                "Time to load, compute and write one chunk.",
                                buckets=buckets, sum_value=h["sum"])
    rel = m["reliability"]
    for kind, doc in (("retries", "Chunk retries, by error category."),
                      ("errors", "Errors, by error category.")):
        c = _counter(kind, doc, labels=["category"])
        for cat in CATEGORIES:
            c.add_metric([cat], rel[kind].get(cat, 0))
        yield c
    yield _gauge("throughput_candles_per_minute", "Recent throughput of the running jobs together.",
                 m["throughput_per_min"])
    yield _gauge("cache_hit_ratio", "Share of finished chunks that were cache hits (jobs in Redis).",
                 m["cache_hit_rate"])
    yield _gauge("error_ratio", "Share of chunk attempts that failed, over the jobs in Redis.",
                 m["error_rate"])
    yield _gauge("running_error_ratio", "Share of chunk attempts of running jobs that failed.",
                 m["running_error_rate"])
    yield _gauge("active_workers", "Workers of the running jobs.", m["active_workers"])
    yield _gauge("active_chunks", "Chunks being computed now (leased).", m["active_chunks"])
    yield _gauge("queue_pending_chunks", "Chunks waiting in unfinished jobs.", m["chunks_pending"])
    js = _gauge("jobs", "Jobs in Redis, by status.", labels=["status"])
    for status in JOB_STATES:
        js.add_metric([status], m["jobs_by_status"].get(status, 0))
    yield js
    br = _gauge("circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                labels=["dependency"])
    for name in sorted({"clickhouse", "redis", *m["breakers"]}):
        br.add_metric([name], breaker_severity(m["breakers"].get(name, {"state": "closed"})["state"]))
    yield br
    yield _gauge("dead_letter_chunks", "Chunks in the dead-letter queue.", m["dead_letters"])
    al = _gauge("alert_firing", "1 while an alert condition holds.", labels=["alert"])
    for name in ALERT_NAMES:
        al.add_metric([name], 1 if name in m["alerts"] else 0)
    yield al
    yield from job_families(jobs)


def job_families(jobs: list[dict[str, Any]]) -> Iterator:
    """Per-job progress gauges, for unfinished jobs only (finished ones would
    pile up series until their Redis TTL)."""
    live = [j for j in jobs if j["status"] in ACTIVE_JOB_STATES]
    info = _gauge("job_info", "1 per unfinished job, with its description.",
                  labels=["job_id", "instrument", "granularity", "priority", "status"])
    progress = _gauge("job_progress_ratio", "Share of the job's candles done.", labels=["job_id"])
    done = _gauge("job_candles_done", "Candles of the job done.", labels=["job_id"])
    total = _gauge("job_candles", "Candles in the job.", labels=["job_id"])
    eta = _gauge("job_eta_seconds", "Estimated seconds left (absent until chunks finished).",
                 labels=["job_id"])
    conf = _gauge("job_eta_confidence", "Confidence of the ETA, 0..1.", labels=["job_id"])
    for j in live:
        jid = j["job_id"]
        info.add_metric([jid, j["instrument"], j["granularity"], j["priority"], j["status"]], 1)
        progress.add_metric([jid], j["progress"])
        done.add_metric([jid], j["candles_done"])
        total.add_metric([jid], j["candles_total"])
        if j["eta_s"] is not None:
            eta.add_metric([jid], j["eta_s"])
            conf.add_metric([jid], j["eta"]["confidence"])
    yield from (info, progress, done, total, eta, conf)


class RedisCollector:
    """Reads the deployment's figures from Redis on every scrape."""

    def __init__(self, service: BackfillService):
        self.service = service

    def collect(self) -> Iterator:
        t0 = time.perf_counter()
        try:
            jobs = [j.model_dump() for j in self.service.jobs(series_limit=0)]
            m = self.service.metrics()
            ok = 1
        except GpubackfillError:
            jobs, m, ok = [], None, 0
        yield _gauge("redis_up", "1 when the last scrape could read Redis.", ok)
        if m is not None:
            yield from families(m, jobs)
        yield _gauge("scrape_duration_seconds", "Time to read the figures from Redis.",
                     time.perf_counter() - t0)


def registry(service: BackfillService) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RedisCollector(service))
    ProcessCollector(namespace=P.rstrip("_"), registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
