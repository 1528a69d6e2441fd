"""The REST API: FastAPI's test client, and real HTTP against uvicorn on a
loopback port with the scheduler running jobs."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import make_settings
from fastapi.testclient import TestClient
from loopback import Uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gpubackfill.candles.synthetic import generate
from gpubackfill.serve.api import create_app
from gpubackfill.serve.scheduler import Scheduler
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey
from gpubackfill.storage.redis_server import ensure_server, stop_server

START, END = "2024-01-01", "2024-01-05"
BODY = {"instrument": "EURUSD", "granularity": "M5", "start_date": START, "end_date": END,
        "labels": ["enhanced_triple_barrier", "mfe_mae"],
        "params": {"enhanced_triple_barrier": {"horizon": 12}}, "chunk_size": 300, "workers": 1}


@pytest.fixture
def ingested(service):
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", START, "2024-01-08"))
    return service


@pytest.fixture
def client(ingested):
    with TestClient(create_app(ingested)) as c:
        yield c


def test_jobs_routes(client, ingested):
    r = client.post("/jobs", json=BODY)
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    assert r.json()["status"] == "queued"
    assert ingested.state.job(job)["params"]["enhanced_triple_barrier"]["horizon"] == 12
    listed = client.get("/jobs").json()
    assert [j["job_id"] for j in listed] == [job]
    assert client.get("/jobs", params={"status": "completed"}).json() == []
    one = client.get(f"/jobs/{job}").json()
    assert one["status"] == "queued" and one["chunks_total"] > 1 and "eta" in one
    assert client.post(f"/jobs/{job}/resume").status_code == 409      # not paused
    assert client.post(f"/jobs/{job}/pause").json() == {"job_id": job, "status": "paused"}
    assert client.post(f"/jobs/{job}/resume").json()["status"] == "running"
    assert client.post(f"/jobs/{job}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/jobs/{job}/cancel").status_code == 409
    missing = client.get("/jobs/0123456789ab")
    assert missing.status_code == 404 and "no job" in missing.json()["detail"]


def test_post_jobs_takes_lists_and_get_returns_the_series(client, ingested):
    ingested.ingest_table(SeriesKey("GBPUSD", "M5"), generate("GBPUSD", "M5", START, "2024-01-08"))
    ingested.ingest_table(SeriesKey("GBPUSD", "H1"), generate("GBPUSD", "H1", START, "2024-01-08"))
    body = {**BODY, "instrument": ["EURUSD", "GBPUSD"], "granularity": ["M5", "H1"]}
    r = client.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    one = client.get(f"/jobs/{r.json()['job_id']}").json()
    assert [(x["instrument"], x["granularity"], x["status"]) for x in one["series"]] == [
        ("EURUSD", "M5", "pending"), ("GBPUSD", "M5", "pending"), ("GBPUSD", "H1", "pending")]
    assert one["skipped"] == ["EURUSD H1"]
    assert sum(x["candles_total"] for x in one["series"]) == one["candles_total"]
    star = client.post("/jobs", json={**BODY, "instrument": "*", "granularity": "H1"})  # may queue
    assert star.status_code == 201, star.text
    assert [x["instrument"] for x in client.get(f"/jobs/{star.json()['job_id']}").json()["series"]] == [
        "GBPUSD"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "SeriesStatus" in schema and "series" in schema["JobStatus"]["properties"]


@pytest.mark.parametrize("change,field", [
    ({"instrument": None}, "instrument"),
    ({"priority": "urgent"}, "priority"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"workers": "many"}, "workers"),
    ({"surprise": 1}, "surprise"),
])
def test_request_validation_is_422_with_the_field(client, change, field):
    body = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    r = client.post("/jobs", json=body)
    assert r.status_code == 422
    assert any(field in e["loc"] for e in r.json()["detail"]), r.json()


def test_refused_requests_and_bad_ids(client):
    r = client.post("/jobs", json={**BODY, "labels": ["nope"]})
    assert r.status_code == 422 and "unknown label 'nope'" in r.json()["detail"]
    r = client.post("/jobs", json={**BODY, "instrument": "XAUUSD"})
    assert r.status_code == 422 and "no candles for XAUUSD" in r.json()["detail"]
    assert client.get("/jobs/not-an-id").status_code == 422
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    schema = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/pause", "/metrics", "/health"} <= set(schema["paths"])


def test_far_dates_and_infinite_numbers_are_422_not_500(client):
    r = client.post("/jobs", json={**BODY, "end_date": "9999-12-31"})
    assert r.status_code == 422 and "end date '9999-12-31'" in r.json()["detail"]
    r = client.post("/jobs", content=b'{"instrument": "EURUSD", "granularity": "M5", '
                    b'"start_date": "2024-01-01", "end_date": "2024-01-05", "chunk_size": Infinity}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and any("chunk_size" in e["loc"] for e in r.json()["detail"])


def test_a_large_body_is_refused_and_input_is_never_echoed(client):
    big = "x" * 2_000_000
    r = client.post("/jobs", json={**BODY, "instrument": big})
    assert r.status_code == 413 and len(r.content) < 1000
    # Without a Content-Length (chunked upload) the stream is cut off too.
    r = client.post("/jobs", content=(b"x" * 65536 for _ in range(40)),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 1000
    secret = "y" * 5000
    r = client.post("/jobs", json={**BODY, "surprise": secret})
    assert r.status_code == 422 and secret not in r.text


def test_bearer_token_guards_mutating_routes(chdb_home, redis_socket):
    settings = make_settings(chdb_home, redis_socket, GPUBACKFILL_API_TOKEN="s3cret-token")
    svc = BackfillService(settings)
    with TestClient(create_app(svc)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            r = c.post("/jobs", json=BODY, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert c.post("/jobs/0123456789ab/cancel", headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/jobs/0123456789ab/cancel", headers=ok).status_code == 404  # past the guard
        assert c.get("/jobs").status_code == 200                                   # reads stay open
        assert c.get("/health").status_code == 200
    assert "s3cret-token" not in repr(settings) and settings.public()["api_token"] == "***"


def test_real_http_job_metrics_and_health(ingested):
    sched = Scheduler(ingested, max_jobs=1, interval=0.1)
    srv = Uvicorn(create_app(ingested, sched))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as h:
            job = h.post("/jobs", json=BODY).json()["job_id"]
            deadline = time.monotonic() + 300
            while (s := h.get(f"/jobs/{job}").json())["status"] != "completed":
                assert time.monotonic() < deadline and s["status"] in ("queued", "running"), s
                time.sleep(0.1)
            assert s["candles_done"] == s["candles_total"] > 0 and s["eta_s"] == 0.0
            assert sched.started_order == [job]
            health = h.get("/health")
            assert health.status_code == 200, health.text
            body = health.json()
            assert body["ready"] and body["checks"]["redis"]["ok"] and body["checks"]["clickhouse"]["ok"]
            assert body["checks"]["workers"]["scheduler"] == "running"
            assert any(c["workers"] == 1 and "in-process" in c["kind"]
                       for c in body["checks"]["workers"]["dask_clusters"]), body["checks"]["workers"]
            assert "present" in body["checks"]["gpu"] and "dask_dashboards" in body
            text = h.get("/metrics")
            assert text.headers["content-type"].startswith("text/plain")
            names = {s.name: s.value for f in text_string_to_metric_families(text.text) for s in f.samples
                     if not s.labels}
            assert names["gpubackfill_candles_processed_total"] == s["candles_total"]
            assert names["gpubackfill_chunks_processed_total"] == s["chunks_total"]
            assert names["gpubackfill_chunk_duration_seconds_count"] == s["chunks_total"]
    finally:
        srv.stop()
        sched.shutdown()
    assert not sched.alive


def test_health_is_503_while_redis_is_down(chdb_home, tmp_path):
    rdir = tmp_path / "own-redis"
    sock = ensure_server(rdir)
    try:
        # With the reliability layer's Redis breaker, health stays 503 until the
        # breaker's reset timeout: keep it short here.
        svc = BackfillService(make_settings(chdb_home, sock, GPUBACKFILL_BREAKER_REDIS_RESET_SECONDS="0.2"))
        with TestClient(create_app(svc)) as c:
            assert c.get("/health").status_code == 200
            stop_server(rdir)
            r = c.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert not body["ready"] and not body["checks"]["redis"]["ok"]
            assert any(x.startswith("redis: cannot reach Redis") for x in body["reasons"])
            assert c.get("/health", params={"probe": "live"}).status_code == 200  # alive, not ready
            assert c.get("/jobs").status_code == 503
            m = c.get("/metrics")
            assert m.status_code == 200 and "gpubackfill_redis_up 0.0" in m.text
            ensure_server(rdir)
            codes = []
            for _ in range(100):  # the client reconnects on its next command
                r = c.get("/health")
                codes.append(r.status_code)
                if codes[-1] == 200:
                    break
                time.sleep(0.1)
            assert codes[-1] == 200, (codes[-3:], r.json()["reasons"])
    finally:
        stop_server(rdir)


def test_serve_command_as_a_process(tmp_path, redis_socket):
    """`gpubackfill serve` in its own process: answers, runs a detached job, stops on SIGTERM."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys

    import pyarrow.parquet as pq
    from test_cli import env_for, run_cli

    env = env_for(make_settings(tmp_path / "home", redis_socket))
    path = tmp_path / "c.parquet"
    pq.write_table(generate("EURUSD", "M5", START, "2024-01-08"), path)
    run_cli(env, "ingest", str(path), "--instrument", "EURUSD", "--granularity", "M5")
    job = run_cli(env, "start", "--instrument", "EURUSD", "--granularity", "M5", "--start-date", START,
                  "--end-date", END, "--chunk-size", "500", "--workers", "1", "--detach").stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gpubackfill", "serve", "--port", str(port)],
                            env={**os.environ, **env, "GPUBACKFILL_SCHEDULER_INTERVAL": "0.2",
                                 "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                s = httpx.get(f"{url}/jobs/{job}", timeout=5).json()
                if s["status"] == "completed":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"serving on http://127.0.0.1:{port}" in err
    events = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert any(e.get("job_id") == job and e.get("status") == "completed" for e in events)


def test_docs_work_offline_from_the_package(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/static/swagger/swagger-ui-bundle.js" in page.text
    js = client.get("/static/swagger/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000
    assert client.get("/static/swagger/swagger-ui.css").status_code == 200
    assert client.get("/openapi.json").status_code == 200
