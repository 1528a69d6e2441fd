"""Metrics from Redis: the exposition after a real job, the CLI view, the
reliability keys of #5, and the structured logs."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from gpubackfill.candles.synthetic import generate
from gpubackfill.common import logs
from gpubackfill.serve.metrics import exposition, registry
from gpubackfill.storage.clickhouse_store import SeriesKey

START, END = "2024-01-01", "2024-01-10"


def samples_by_name(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(samples, name, **labels) -> float:
    hits = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


@pytest.fixture
def finished_job(service):
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", START, "2024-01-20"))
    job = service.start("EURUSD", "M5", START, END, labels=["enhanced_triple_barrier", "mfe_mae"],
                        chunk_size=400, workers=2)
    return job


def test_exposition_after_a_job_has_the_expected_series(service, finished_job):
    s = service.job(finished_job).model_dump()
    queued = service.create_job("EURUSD", "M5", START, END, chunk_size=1_000, priority="high")
    text = exposition(registry(service)).decode()
    m = samples_by_name(text)
    assert value(m, "gpubackfill_redis_up") == 1
    assert value(m, "gpubackfill_candles_processed_total") == s["candles_done"] > 0
    assert value(m, "gpubackfill_chunks_processed_total") == s["chunks_total"]
    assert value(m, "gpubackfill_label_rows_written_total") == s["rows_written"]
    assert value(m, "gpubackfill_cache_hits_total") == 0
    for label in ("enhanced_triple_barrier", "mfe_mae"):
        assert value(m, "gpubackfill_labels_computed_total", label=label) == s["rows_written"]
    assert value(m, "gpubackfill_instrument_candles_processed_total", instrument="EURUSD") == s["candles_done"]
    assert value(m, "gpubackfill_instruments_processed") == 1
    assert value(m, "gpubackfill_chunk_duration_seconds_count") == s["chunks_total"]
    assert value(m, "gpubackfill_chunk_duration_seconds_bucket", le="+Inf") == s["chunks_total"]
    assert value(m, "gpubackfill_chunk_duration_seconds_sum") > 0
    assert value(m, "gpubackfill_jobs", status="completed") == 1
    assert value(m, "gpubackfill_jobs", status="queued") == 1
    assert value(m, "gpubackfill_queue_pending_chunks") == service.job(queued).model_dump()["chunks_total"]
    for cat in ("transient", "resource", "dependency", "data", "persistent"):
        assert value(m, "gpubackfill_retries_total", category=cat) == 0
        assert value(m, "gpubackfill_errors_total", category=cat) == 0
    assert value(m, "gpubackfill_circuit_breaker_state", dependency="clickhouse") == 0
    assert value(m, "gpubackfill_dead_letter_chunks") == 0
    # per-job gauges for the unfinished job only
    assert value(m, "gpubackfill_job_info", job_id=queued, priority="high", status="queued") == 1
    assert value(m, "gpubackfill_job_progress_ratio", job_id=queued) == 0
    assert not [x for x in m["gpubackfill_job_info"] if x.labels["job_id"] == finished_job]
    assert value(m, "gpubackfill_process_resident_memory_bytes") > 1e6
    assert value(m, "gpubackfill_process_cpu_seconds_total") > 0
    for name in ("gpubackfill_throughput_candles_per_minute", "gpubackfill_cache_hit_ratio",
                 "gpubackfill_error_ratio", "gpubackfill_active_workers"):
        assert name in m
    # a re-run counts cache hits
    service.start("EURUSD", "M5", START, END, labels=["enhanced_triple_barrier", "mfe_mae"],
                  chunk_size=400, workers=2)
    m2 = samples_by_name(exposition(registry(service)).decode())
    assert value(m2, "gpubackfill_cache_hits_total") == s["chunks_total"]
    assert value(m2, "gpubackfill_candles_processed_total") == 2 * s["candles_done"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed "
                    "(apt-get install prometheus); the parser test above still runs")
def test_exposition_passes_promtool(service, finished_job, tmp_path):
    service.create_job("EURUSD", "M5", START, END, chunk_size=1_000)
    text = exposition(registry(service))
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_reliability_keys_light_up_metrics_and_the_cli(service, settings, monkeypatch):
    p, r = service.state.prefix, service.state.client
    r.hset(f"{p}:breakers", mapping={
        "clickhouse": json.dumps({"state": "open", "failures": 7, "changed_ms": 1}),
        "redis": json.dumps({"state": "half_open", "failures": 2, "changed_ms": 1}),
        "broken": "not json"})
    r.hset(f"{p}:dlq", mapping={"j1:3": json.dumps({"job_id": "j1", "chunk": 3}),
                                "j1:4": json.dumps({"job_id": "j1", "chunk": 4})})
    r.hset(f"{p}:counters", mapping={"retries:transient": 5, "errors:data": 2, "junk": 1})
    m = samples_by_name(exposition(registry(service)).decode())
    assert value(m, "gpubackfill_circuit_breaker_state", dependency="clickhouse") == 2
    assert value(m, "gpubackfill_circuit_breaker_state", dependency="redis") == 1
    assert value(m, "gpubackfill_circuit_breaker_state", dependency="broken") == 0
    assert value(m, "gpubackfill_dead_letter_chunks") == 2
    assert value(m, "gpubackfill_retries_total", category="transient") == 5
    assert value(m, "gpubackfill_errors_total", category="data") == 2
    from test_cli import env_for

    from gpubackfill.cli import main

    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(main, ["metrics", "--format", "json"], catch_exceptions=False).output
    j = json.loads(out)
    assert j["breakers_open"] == ["clickhouse"] and j["dead_letters"] == 2
    assert j["reliability"]["retries"]["transient"] == 5
    table = CliRunner().invoke(main, ["metrics"], catch_exceptions=False).output
    assert "breaker clickhouse" in table and "open (7 failures)" in table


def test_json_logs_one_line_per_state_change_and_chunk_failure(service):
    buf = io.StringIO()
    logs.configure("INFO", "json", buf)
    try:
        service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", START, "2024-01-20"))
        job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=1)
        service.pause(job)
        service.resume(job)  # paused -> running without a driver: executes below
        service.state.transition(job, "interrupt")
        # a label the registry does not know (the stored labels are taken as
        # stored): every chunk fails as bad data, saying why (not retried)
        service.state.set_fields(job, labels=["enhanced_triple_barrier", "no_such_label"])
        service.execute(job)
        service.cancel(service.create_job("EURUSD", "M5", START, "2024-01-12", chunk_size=2_000))
    finally:
        logs.configure("WARNING", "text")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    events = [(x.get("job_id"), x.get("event"), x.get("status")) for x in lines]
    assert (job, "create", "queued") in events
    assert (job, "pause", "paused") in events and (job, "resume", "running") in events
    assert (job, "execute", "running") in events
    assert any(e[0] == job and e[1] == "settled" for e in events)
    assert any(e[1] == "cancel" and e[2] == "cancelled" for e in events)
    failures = [x for x in lines if x.get("event") == "chunk_failed"]
    chunks = service.job(job).model_dump()["chunks_total"]
    assert sorted(x["chunk"] for x in failures) == list(range(chunks))
    assert all(x["job_id"] == job and "no_such_label" in x["message"] for x in failures)
    assert service.job(job).model_dump()["status"] == "completed_with_errors"
    assert all({"time", "level", "message"} <= set(x) for x in lines)
