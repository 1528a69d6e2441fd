"""Nothing listens beyond loopback unless asked: the Dask clusters a job
starts (in-process with chDB, worker processes with a ClickHouse server) and
``serve``; and ``serve`` stops cleanly on Ctrl-C."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from chhttp import ClickHouseHTTPServer
from conftest import make_settings
from test_cli import env_for, run_cli

from gpubackfill.candles.synthetic import generate
from gpubackfill.storage.clickhouse_store import SeriesKey

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1", "::1")

# A job run as a job runs, in a process of its own (so that the cluster is
# the one this job started); then every socket that process and its workers
# listen on, and whether the dashboard answers at the link a user is shown.
JOB = """
import json, psutil, httpx
from gpubackfill.engine import cluster
from gpubackfill.candles.synthetic import generate
from gpubackfill.config import Settings
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey

if __name__ == "__main__":
    svc = BackfillService(Settings.from_env(dotenv=False))
    svc.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-08"))
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-07", chunk_size=500, workers=2)
    assert svc.execute(job).status == "completed"
    me = psutil.Process()
    listening = [[p.pid, c.laddr.ip, c.laddr.port] for p in [me, *me.children(recursive=True)]
                 for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    [summary] = cluster.cluster_summary()
    link = summary["dashboard"]
    answer = httpx.get(link, timeout=30).status_code if link else None
    print(json.dumps({"listening": listening, "kind": summary["kind"], "link": link,
                      "answer": answer}))
"""


def _run_job(env: dict) -> dict:
    res = subprocess.run([sys.executable, "-c", JOB], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", ["in-process", "processes"])
def test_a_job_s_dask_cluster_listens_on_loopback_only(shape, tmp_path, redis_socket):
    # Without bokeh Dask serves no dashboard pages: the test would not see them.
    assert importlib.util.find_spec("bokeh"), "bokeh is a test dependency"
    env = env_for(make_settings(tmp_path / "home", redis_socket))
    server = None
    if shape == "processes":
        server = ClickHouseHTTPServer(str(tmp_path / "ch"), tmp_dir=str(tmp_path))
        server.start()
        env["CLICKHOUSE_URL"] = server.url
    try:
        out = _run_job(env)
    finally:
        if server:
            server.stop()
    assert out["kind"].startswith({"in-process": "in-process", "processes": "local processes"}[shape])
    assert out["listening"], "a cluster with a dashboard listens somewhere"
    assert [x for x in out["listening"] if x[1] not in LOOPBACK] == []
    assert out["link"].startswith("http://127.0.0.1:") and out["answer"] == 200


def test_the_dask_host_is_the_user_s_choice(tmp_path, redis_socket):
    # Another loopback address, so that the test itself opens nothing wider.
    env = {**env_for(make_settings(tmp_path / "home", redis_socket)), "GPUBACKFILL_DASK_HOST": "127.0.0.2"}
    out = _run_job(env)
    assert {ip for _, ip, _ in out["listening"]} == {"127.0.0.2"}, out
    assert out["link"].startswith("http://127.0.0.2:") and out["answer"] == 200


def test_a_job_shows_its_dashboard_while_it_runs_and_not_after(service):
    service.ingest_table(SeriesKey("EURUSD", "M5"), generate("EURUSD", "M5", "2024-01-01", "2024-01-08"))
    job = service.create_job("EURUSD", "M5", "2024-01-01", "2024-01-07", chunk_size=500, workers=2)
    while_running = []

    def progress(s: dict) -> None:
        if s["status"] == "running":
            while_running.append(s["dashboard"])

    assert service.execute(job, progress=progress).status == "completed"
    assert while_running and all(link.startswith("http://127.0.0.1:") for link in while_running)
    assert service.job(job).model_dump()["dashboard"] == ""
    assert "dashboard" not in run_cli(env_for(service.settings), "status", job).stdout


def test_start_prints_the_dashboard_link_which_answers_while_the_job_runs(tmp_path, redis_socket):
    import pyarrow.parquet as pq

    env = {**env_for(make_settings(tmp_path / "home", redis_socket)), "GPUBACKFILL_TASK_CANDLES": "1"}
    path = tmp_path / "c.parquet"
    pq.write_table(generate("EURUSD", "M1", "2024-01-01", "2024-02-01"), path)
    run_cli(env, "ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1")
    # A chunk a task, a hundred-odd chunks: paused from another process as
    # soon as the link is out, so the cluster is up however fast the machine.
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpubackfill", "start", "--instrument", "EURUSD", "--granularity", "M1",
         "--start-date", "2024-01-01", "--end-date", "2024-01-31", "--chunk-size", "300", "--workers", "1"],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("dask dashboard: "):
                break
        job = next(x.split()[1] for x in lines if x.startswith("job "))
        link = lines[-1].split(": ", 1)[1].strip()
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status"), lines
        assert "paused" in run_cli(env, "pause", job).stdout
        assert httpx.get(link, timeout=30).status_code == 200
        assert "cancelled" in run_cli(env, "cancel", job).stdout
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1 and f"{job} cancelled" in rest, rest
    assert sum(x.startswith("dask dashboard: ") for x in [*lines, *rest.splitlines()]) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_until(env: dict, sig: int, *args: str) -> tuple[int, str]:
    """Start ``serve``, wait until it answers /health, send ``sig``; its exit
    status and stderr."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpubackfill", "serve", "--port", str(port), *args],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve did not answer"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def test_ctrl_c_stops_serve_cleanly(tmp_path, redis_socket):
    code, err = _serve_until(env_for(make_settings(tmp_path / "home", redis_socket)), signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err and "Aborted" not in err and "serving on http://127.0.0.1:" in err


@pytest.mark.parametrize("how", [("--host", "0.0.0.0"), ("GPUBACKFILL_API_HOST", "0.0.0.0")])
def test_serve_beyond_loopback_needs_a_token(how, tmp_path, redis_socket):
    env = env_for(make_settings(tmp_path / "home", redis_socket))
    args = ["serve", "--port", str(_free_port())]
    if how[0].startswith("--"):
        args += list(how)
    else:
        env[how[0]] = how[1]
    res = run_cli(env, *args, check=False, timeout=60)
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: 0.0.0.0 is not a loopback address and GPUBACKFILL_API_TOKEN is not set")
    assert "--insecure" in line


def test_serve_insecure_warns_once_and_a_token_needs_no_warning(tmp_path, redis_socket):
    env = env_for(make_settings(tmp_path / "home", redis_socket))
    # Asked for: listens on every interface, until /health answers.
    code, err = _serve_until(env, signal.SIGTERM, "--host", "0.0.0.0", "--insecure")
    assert code == 0, err
    warnings = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "without GPUBACKFILL_API_TOKEN" in warnings[0], err
    code, err = _serve_until({**env, "GPUBACKFILL_API_TOKEN": "s3cret"}, signal.SIGTERM,
                             "--host", "0.0.0.0")
    assert code == 0 and "warning:" not in err, err
