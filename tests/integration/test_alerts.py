"""Alerts: thresholds, one webhook per crossing, records in Redis."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from conftest import make_settings

from gpubackfill.candles.synthetic import generate
from gpubackfill.serve.alerts import Alerter, evaluate
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey


class Receiver:
    """A loopback HTTP server recording the JSON bodies POSTed to it."""

    def __init__(self):
        self.bodies: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.bodies.append((self.path, json.loads(self.rfile.read(n))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_thresholds(settings):
    base = {"running_error_rate": 0.0, "throughput_per_min": 0.0, "running_jobs_measured": 0,
            "recent_chunk_seconds_p50": 0.0, "chunks_pending": 0, "breakers_open": []}
    assert not any(c.firing for c in evaluate(base, settings))
    bad = {"running_error_rate": 0.06, "throughput_per_min": 499_999.0, "running_jobs_measured": 1,
           "recent_chunk_seconds_p50": 1.5, "chunks_pending": 5_001, "breakers_open": ["redis"]}
    fired = {c.name: c for c in evaluate(bad, settings) if c.firing}
    assert set(fired) == {"error_rate", "low_throughput", "chunk_latency", "circuit_breaker_open",
                          "queue_backlog"}
    assert "redis" in fired["circuit_breaker_open"].message
    # a slow start (no running job measured yet) is not low throughput
    assert not any(c.firing for c in evaluate({**bad, "running_jobs_measured": 0, "running_error_rate": 0,
                                                "recent_chunk_seconds_p50": 0, "chunks_pending": 0,
                                                "breakers_open": []}, settings))
    custom = settings.model_copy(update=dict(alert_max_queue=10_000, alert_error_rate=0.1))
    assert {c.name for c in evaluate(bad, custom) if c.firing} == {"low_throughput", "chunk_latency",
                                                                 "circuit_breaker_open"}


def test_one_webhook_per_crossing_to_every_url(chdb_home, redis_socket, receiver, monkeypatch):
    settings = make_settings(chdb_home, redis_socket, ALERT_MAX_QUEUE="3",
                             ALERT_WEBHOOKS=f"{receiver.url}/a,{receiver.url}/b,http://127.0.0.1:1/dead")
    service = BackfillService(settings)
    monkeypatch.setattr("gpubackfill.serve.alerts.WEBHOOK_BACKOFF_S", 0.01)
    alerter = Alerter(service.telemetry, settings)
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-10"))
    job = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-05", chunk_size=100)
    p, r = service.state.prefix, service.state.client
    r.hset(f"{p}:breakers", "clickhouse", json.dumps({"state": "open", "failures": 5, "changed_ms": 1}))
    assert sorted(alerter.check(service.metrics())) == ["circuit_breaker_open", "queue_backlog"]
    assert alerter.check(service.metrics()) == []           # still firing: no storm
    assert Alerter(service.telemetry, settings).check(service.metrics()) == []  # nor from another process
    r.hset(f"{p}:breakers", "clickhouse", json.dumps({"state": "closed", "failures": 0, "changed_ms": 2}))
    assert alerter.check(service.metrics()) == []           # the breaker alert clears
    r.hset(f"{p}:breakers", "clickhouse", json.dumps({"state": "open", "failures": 5, "changed_ms": 3}))
    assert alerter.check(service.metrics()) == ["circuit_breaker_open"]  # and fires again
    assert alerter.flush(60)
    got = sorted((path, b["alert"]) for path, b in receiver.bodies)
    assert got == sorted([("/a", "circuit_breaker_open"), ("/b", "circuit_breaker_open"),
                          ("/a", "queue_backlog"), ("/b", "queue_backlog")] * 1
                         + [("/a", "circuit_breaker_open"), ("/b", "circuit_breaker_open")])
    body = receiver.bodies[0][1]
    assert body["status"] == "firing" and body["threshold"] is not None and body["message"]
    history = service.telemetry.alert_history()
    assert [h["event"] for h in history if h["alert"] == "circuit_breaker_open"] == \
        ["firing", "resolved", "firing"]
    # recorded in Redis and shown by `gpubackfill metrics`
    from test_cli import env_for

    from gpubackfill.cli import main

    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(main, ["metrics"], catch_exceptions=False).output
    assert "ALERT circuit_breaker_open: circuit breaker open: clickhouse" in out
    assert "ALERT queue_backlog" in out
    service.cancel(job)
    assert alerter.check(service.metrics()) == [] and "queue_backlog" not in service.telemetry.alerts()


@pytest.mark.parametrize("name,value,message", [
    ("ALERT_ERROR_RATE", "lots", "ALERT_ERROR_RATE must be a number, got 'lots'"),
    ("ALERT_MIN_THROUGHPUT", "-5", "ALERT_MIN_THROUGHPUT must be a finite number >= 0"),
    ("ALERT_MAX_CHUNK_SECONDS", "nan", "ALERT_MAX_CHUNK_SECONDS must be a finite number"),
    ("ALERT_MAX_QUEUE", "1.5", "ALERT_MAX_QUEUE must be an integer"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT must be text or json"),
    ("GPUBACKFILL_API_PORT", "70000", "GPUBACKFILL_API_PORT must be <= 65535"),
    ("GPUBACKFILL_MAX_CONCURRENT_JOBS", "0", "GPUBACKFILL_MAX_CONCURRENT_JOBS must be >= 1"),
    ("ALERT_WEBHOOKS", "ftp://x", "ALERT_WEBHOOKS entries must be http(s) URLs"),
])
def test_bad_observability_settings_name_their_variable(name, value, message):
    from gpubackfill.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env({name: value}, dotenv=False)


def test_thresholds_come_from_the_environment():
    from gpubackfill.config import Settings

    s = Settings.from_env({"ALERT_ERROR_RATE": "0.1", "ALERT_MIN_THROUGHPUT": "1e6",
                           "ALERT_MAX_CHUNK_SECONDS": "2.5", "ALERT_MAX_QUEUE": "10"}, dotenv=False)
    assert (s.alert_error_rate, s.alert_min_throughput, s.alert_max_chunk_seconds, s.alert_max_queue) == \
        (0.1, 1e6, 2.5, 10)
    d = Settings.from_env({}, dotenv=False)
    assert (d.alert_error_rate, d.alert_min_throughput, d.alert_max_chunk_seconds, d.alert_max_queue) == \
        (0.05, 500_000, 1.0, 5_000)


def test_the_scheduler_pass_evaluates_alerts(chdb_home, redis_socket):
    from gpubackfill.serve.scheduler import Scheduler

    settings = make_settings(chdb_home, redis_socket, ALERT_MAX_QUEUE="2")
    service = BackfillService(settings)
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-05"))
    job = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-04", chunk_size=100)
    service.pause(job)  # waiting work, but not the scheduler's to start
    sched = Scheduler(service, max_jobs=1, alerter=Alerter(service.telemetry, settings))
    assert sched.tick() == []
    alert = service.telemetry.alerts()["queue_backlog"]
    assert alert["value"] == service.job(job).model_dump()["chunks_total"] > 2
    service.cancel(job)
    sched.tick()
    assert "queue_backlog" not in service.telemetry.alerts()


def test_eta_text_in_status_and_monitor():
    from gpubackfill.cli._common import _eta_text

    running = {"status": "running", "eta_s": 120.4,
               "eta": {"low_s": 90.2, "high_s": 150.9, "confidence": 0.8234}}
    assert _eta_text(running) == "120s (90-151s, conf 0.82)"
    assert _eta_text({**running, "eta": {"low_s": None, "high_s": None, "confidence": 0.0}}) == "120s"
    assert _eta_text({"status": "queued", "eta_s": None, "eta": {}}) == "-"
    assert _eta_text({"status": "completed", "eta_s": 0.0, "eta": running["eta"]}) == "0s"
