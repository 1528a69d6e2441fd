"""Fault injection: real chDB, real redis-servers, real processes.

Every scenario ends with the same oracle (``assert_survived``): every label
row present with the values ``compute_labels`` gives on the whole series,
``count()`` equal to the distinct keys without FINAL, no chunk left leased,
and Redis' counters equal to what ClickHouse holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pytest
from chhttp import ClickHouseHTTPServer
from click.testing import CliRunner
from conftest import make_settings
from faultproxy import FaultProxy
from test_cli import env_for, exported_ts_are_unique, run_cli
from test_engine import assert_matches_whole_series

import gpubackfill.engine.chunk as chunk_mod
from gpubackfill.candles.synthetic import generate
from gpubackfill.cli import main
from gpubackfill.errors import InvalidTransition
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey
from gpubackfill.storage.redis_server import ensure_server, stop_server

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Tasks of a few chunks (about 2,400 candles), so that a job is still
# running, with chunks left, when a test interrupts it after its first ones.
FAST = {"GPUBACKFILL_RETRY_BASE_SECONDS": "0.02", "GPUBACKFILL_LEASE_SECONDS": "3",
        "GPUBACKFILL_TASK_CANDLES": "2400"}


def ingest(svc, instrument="EURUSD", granularity="M5", start="2024-01-01", end="2024-02-01"):
    table = generate(instrument, granularity, start, end)
    svc.ingest_table(SeriesKey(instrument, granularity), table)
    return table


def assert_survived(svc, job, candles):
    s = svc.job(job).model_dump()
    assert s["status"] == "completed", (s["status"], s["last_errors"])
    assert_matches_whole_series(svc, job, candles)
    assert svc.state.leases(job) == {}
    assert s["chunks"]["done"] == s["chunks_total"] and s["chunks"]["leased"] == 0
    n, uniq = svc.store.label_counts(SeriesKey(s["instrument"], s["granularity"]), s["label_set"])
    assert s["candles_done"] == s["candles_total"] == n == uniq


def run_in_thread(svc, job):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("result", svc.execute(job)), daemon=True)
    t.start()
    return t, out


def wait_for(pred, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def done_chunks(svc, job) -> int:
    return svc.job(job).model_dump()["chunks"]["done"]


# -- data errors and poison chunks (7, 8) ----------------------------------------


def _as_rows(key: SeriesKey, table: pa.Table) -> pa.Table:
    """Candles in the stored table's layout (ts as a UTC millisecond timestamp)."""
    n = table.num_rows
    return pa.table({"instrument": [key.instrument] * n, "granularity": [key.granularity] * n,
                     "ts": table.column("ts").cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
                     **{c: table.column(c) for c in ("open", "high", "low", "close", "volume")}})


def _corrupt(svc, key: SeriesKey, candles: pa.Table, rows: list[int]) -> list[int]:
    """Replace candles ``rows`` with malformed ones, as a broken upstream would."""
    ts = candles.column("ts").to_numpy()[rows]
    db = svc.store.db
    svc.store.command(f"DELETE FROM {db}.candles WHERE instrument = {{i:String}} AND "
                      f"toUnixTimestamp64Milli(ts) IN {{t:Array(Int64)}}",
                      {"i": key.instrument, "t": [int(t) for t in ts]})
    bad = candles.take(pa.array(rows)).to_pydict()
    bad["close"][0] = float("nan")                      # NaN
    bad["high"][1] = bad["low"][1] * 0.99               # high < low
    bad["open"][2] = 0.0                                # zero price
    extra = {k: [v[3]] for k, v in bad.items()}         # a duplicate ts
    table = pa.concat_tables([pa.table(bad, schema=candles.schema),
                              pa.table(extra, schema=candles.schema)])
    svc.store.insert_arrow("candles", _as_rows(key, table))
    return [int(t) for t in ts]


def _restore(svc, key, candles, rows, ts):
    db = svc.store.db
    svc.store.command(f"DELETE FROM {db}.candles WHERE instrument = {{i:String}} AND "
                      f"toUnixTimestamp64Milli(ts) IN {{t:Array(Int64)}}",
                      {"i": key.instrument, "t": ts})
    svc.store.insert_arrow("candles", _as_rows(key, candles.take(pa.array(rows))))


def test_malformed_candles_dead_letter_their_chunk_and_dlq_retry_completes(settings, monkeypatch):
    svc = BackfillService(settings.model_copy(update=dict(retry_base_seconds=0.02)))
    key = SeriesKey("EURUSD", "M5")
    candles = ingest(svc)
    rows = [2400, 2450, 2500, 2550]  # mid-chunk 2 of 1,000: out of every other chunk's halo
    ts = _corrupt(svc, key, candles, rows)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"],
                         chunk_size=1000, workers=2)
    result = svc.execute(job)
    s = svc.job(job).model_dump()
    assert result.status == "completed_with_errors"
    assert s["chunks"]["failed"] == 1 and s["chunks"]["done"] == s["chunks_total"] - 1
    [entry] = svc.dead_letters(job)
    assert entry["category"] == "data" and entry["attempts"] == 1
    named = {t for t, _ in entry["rows"]}
    iso = {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t / 1000)) for t in ts}
    assert iso <= named, (iso, entry["rows"])
    assert any("NaN" in r for _, r in entry["rows"]) and any("duplicate" in r for _, r in entry["rows"])
    assert svc.metrics()["error_rate"] == pytest.approx(1 / s["chunks_total"])

    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    listed = runner.invoke(main, ["dlq", "list", "--job", job, "--format", "json"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["id"] == entry["id"]
    shown = json.loads(runner.invoke(main, ["dlq", "show", entry["id"]]).output)
    assert "InvalidCandles" in shown["error"] and shown["digest"]
    _restore(svc, key, candles, rows, ts)
    retried = runner.invoke(main, ["dlq", "retry", "--job", job], catch_exceptions=False)
    assert retried.exit_code == 0, retried.output
    assert f"job {job}: 1 chunk re-queued" in retried.output
    assert svc.dead_letters(job) == []
    assert_survived(svc, job, candles)
    missing = runner.invoke(main, ["dlq", "show", "nope:1"])
    assert missing.exit_code == 2 and "no dead-letter entry" in missing.output


def test_poison_chunk_is_dead_lettered_after_its_attempts(settings, monkeypatch):
    svc = BackfillService(settings.model_copy(update=dict(retry_base_seconds=0.01)))
    candles = ingest(svc)
    poison = int(candles.column("ts").to_numpy()[3500])  # mid-chunk: in no other halo
    real = chunk_mod.compute_series

    def kernel(series, *args, **kwargs):
        if np.any(series.ts == poison):
            raise RuntimeError("kernel blew up")
        return real(series, *args, **kwargs)

    monkeypatch.setattr(chunk_mod, "compute_series", kernel)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"],
                         chunk_size=1000, workers=2)
    assert svc.execute(job).status == "completed_with_errors"
    [entry] = svc.dead_letters(job)
    assert entry["category"] == "transient" and entry["attempts"] == 5  # the policy's 5 tries
    assert "kernel blew up" in entry["message"]
    counters = svc.state.counters()
    assert counters["retries:transient"] == 4 and counters["errors:transient"] == 1
    s = svc.job(job).model_dump()
    assert s["chunks"]["done"] == s["chunks_total"] - 1
    n, uniq = svc.store.label_counts(SeriesKey("EURUSD", "M5"), s["label_set"])
    assert n == uniq == s["candles_total"] - 1000  # every other chunk written, once


def test_persistent_error_fails_the_job_and_execute_resumes_after_the_fix(settings, monkeypatch):
    from gpubackfill.errors import PersistentError

    svc = BackfillService(settings.model_copy(update=dict(retry_base_seconds=0.01)))
    candles = ingest(svc)
    real = chunk_mod.compute_series
    broken = {"yes": True}

    def kernel(series, *args, **kwargs):
        if broken["yes"]:
            raise PersistentError("permission denied on the label table")
        return real(series, *args, **kwargs)

    monkeypatch.setattr(chunk_mod, "compute_series", kernel)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"],
                         chunk_size=1000, workers=1)
    assert svc.execute(job).status == "failed"
    assert all(e["category"] == "persistent" for e in svc.dead_letters(job))
    broken["yes"] = False
    assert svc.execute(job).status == "completed"
    assert svc.dead_letters(job) == []
    assert_survived(svc, job, candles)


# -- resources -------------------------------------------------------------------


def test_memory_error_splits_the_chunk_until_it_fits(settings, monkeypatch):
    svc = BackfillService(settings.model_copy(update=dict(min_chunk_size=500, retry_base_seconds=0.01)))
    candles = ingest(svc)
    real = chunk_mod._compute_and_write
    sizes = []

    def hungry(store, task, fence=lambda: None):
        sizes.append(task.rows)
        if task.rows > 1500:
            raise MemoryError("cannot allocate")
        return real(store, task, fence)

    monkeypatch.setattr(chunk_mod, "_compute_and_write", hungry)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", chunk_size=4000, workers=2)
    assert svc.execute(job).status == "completed", json.dumps(svc.dead_letters(job))
    plan = svc.state.plan(job)
    assert len(plan) > 3 and max(g.rows for segs in plan.values() for g in segs) <= 1500
    assert max(sizes) == 4000 and svc.dead_letters(job) == []
    assert_survived(svc, job, candles)


def test_memory_budget_splits_chunks_before_loading(settings):
    svc = BackfillService(settings.model_copy(update=dict(min_chunk_size=500, memory_limit_bytes=1)))
    candles = ingest(svc)
    job = svc.create_job("EURUSD", "M5", "2024-01-01", "2024-01-31", chunk_size=4000, workers=2)
    assert svc.execute(job).status == "completed"
    rows = [g.rows for segs in svc.state.plan(job).values() for g in segs]
    assert max(rows) < 1000 and sum(rows) == svc.job(job).model_dump()["candles_total"]
    assert_survived(svc, job, candles)


@pytest.mark.slow
def test_rss_stays_flat_over_many_chunks(settings):
    """No leak per chunk: after warm-up, 3 x ~60 more chunks in this worker
    process grow its RSS by less than 64 MiB (1% of a chunk's data each).
    Each run is a new label set (a new horizon), so every chunk computes and
    inserts afresh."""
    svc = BackfillService(settings)
    ingest(svc, "USDJPY", "M1", "2024-01-01", "2024-03-01")
    proc = psutil.Process()

    def run(horizon: int) -> int:
        job = svc.create_job("USDJPY", "M1", "2024-01-01", "2024-03-01", labels=["mfe_mae"],
                             params={"mfe_mae": {"horizon": horizon}}, chunk_size=1000, workers=2)
        assert svc.execute(job).status == "completed"
        return proc.memory_info().rss

    run(20)
    baseline = run(21)
    after = [run(h) for h in (22, 23, 24)]
    assert max(after) - baseline < 64 * 2**20, (baseline, after)


# -- Redis faults (4, 5) ------------------------------------------------------------



def test_redis_restart_mid_job_loses_nothing(chdb_home, own_redis):
    d, sock = own_redis
    settings = make_settings(chdb_home, sock, GPUBACKFILL_BREAKER_REDIS_RESET_SECONDS="0.5", **FAST)
    svc = BackfillService(settings)
    candles = ingest(svc, "GBPUSD", "M5")
    job = svc.create_job("GBPUSD", "M5", "2024-01-01", "2024-01-31", chunk_size=300, workers=2)
    t, out = run_in_thread(svc, job)
    wait_for(lambda: done_chunks(svc, job) >= 3, what="3 chunks")
    stop_server(d)  # SHUTDOWN SAVE: the append-only file keeps every acknowledged write
    time.sleep(1.5)
    ensure_server(d)
    t.join(timeout=180)
    assert not t.is_alive() and out["result"].status == "completed"
    assert_survived(svc, job, candles)


def test_redis_outage_opens_the_breaker_without_a_busy_loop(chdb_home, own_redis):
    _, sock = own_redis
    with FaultProxy(str(sock)) as proxy:
        settings = make_settings(chdb_home, sock, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
                                 GPUBACKFILL_BREAKER_REDIS_RESET_SECONDS="1",
                                 GPUBACKFILL_BREAKER_REDIS_FAILURES="3", **FAST)
        svc = BackfillService(settings)
        # Six months in chunks of 300: ~170 chunks, seconds of work, so the
        # job is still running when Redis goes away (a month's 30 chunks
        # could all finish between two polls on a quiet machine, and then
        # nothing called Redis during the outage).
        candles = ingest(svc, "AUDUSD", "M5", "2024-01-01", "2024-07-01")
        job = svc.create_job("AUDUSD", "M5", "2024-01-01", "2024-06-30", chunk_size=300, workers=2)
        t, out = run_in_thread(svc, job)
        wait_for(lambda: done_chunks(svc, job) >= 2, what="2 chunks")
        proxy.set("refuse")
        proxy.reset_count()
        assert t.is_alive(), "the job finished before the outage began"
        opened = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            opened.append(svc.state.breaker.current_state)
            time.sleep(0.05)
        attempts = proxy.connections
        proxy.set("pass")
        t.join(timeout=180)
        assert not t.is_alive() and out["result"].status == "completed"
        assert "open" in opened
        # Four seconds of outage: a spinning client would connect thousands of times.
        assert attempts < 60, attempts
        assert svc.state.breaker.current_state == "closed"
        assert svc.telemetry.breakers()["redis"]["state"] == "closed"
        assert_survived(svc, job, candles)


# -- ClickHouse faults and worker processes (6, 1) ------------------------------------


@pytest.fixture
def ch_behind_proxy(tmp_path):
    srv = ClickHouseHTTPServer(str(tmp_path / "ch"), tmp_dir=str(tmp_path))
    srv.start()
    with FaultProxy(("127.0.0.1", srv.port)) as proxy:
        yield srv, proxy
    srv.stop()


def test_clickhouse_outage_during_writes_waits_and_recovers(ch_behind_proxy, tmp_path, redis_socket):
    srv, proxy = ch_behind_proxy
    settings = make_settings(tmp_path / "home", redis_socket,
                             CLICKHOUSE_URL=f"http://127.0.0.1:{proxy.port}",
                             GPUBACKFILL_BREAKER_CLICKHOUSE_FAILURES="3",
                             GPUBACKFILL_BREAKER_CLICKHOUSE_RESET_SECONDS="1", **FAST)
    svc = BackfillService(settings)
    candles = ingest(svc, "EURUSD", "M15", "2023-06-01", "2024-01-10")
    job = svc.create_job("EURUSD", "M15", "2023-06-01", "2023-12-31", chunk_size=800, workers=2)
    t, out = run_in_thread(svc, job)
    wait_for(lambda: done_chunks(svc, job) >= 2, timeout=180, what="2 chunks")
    proxy.set("refuse")
    time.sleep(3)
    during = svc.job(job).model_dump()
    proxy.set("pass")
    t.join(timeout=240)
    assert not t.is_alive() and out["result"].status == "completed", svc.job(job).model_dump()["last_errors"]
    assert during["status"] == "running" and during["chunks"]["failed"] == 0
    assert svc.dead_letters(job) == []
    counters = svc.state.counters()
    assert counters.get("retries:dependency", 0) + counters.get("errors:dependency", 0) > 0, counters
    assert_survived(svc, job, candles)


def _dask_workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "multiprocessing" in " ".join(p.cmdline()) and "spawn_main" in " ".join(p.cmdline())]


def test_sigkill_of_a_worker_process_mid_chunk(ch_behind_proxy, tmp_path, redis_socket):
    srv, proxy = ch_behind_proxy
    proxy.set("pass", delay=0.02)  # slow every exchange down so chunks are caught mid-way
    settings = make_settings(tmp_path / "home", redis_socket,
                             CLICKHOUSE_URL=f"http://127.0.0.1:{proxy.port}", **FAST)
    svc = BackfillService(settings)
    candles = ingest(svc, "USDCHF", "M15", "2023-09-01", "2024-01-10")
    job = svc.create_job("USDCHF", "M15", "2023-09-01", "2023-12-31", chunk_size=500, workers=2)
    t, out = run_in_thread(svc, job)
    wait_for(lambda: done_chunks(svc, job) >= 2 and svc.state.leases(job), timeout=180,
             what="a chunk in flight")
    victims = _dask_workers()
    assert victims, "no worker processes found"
    victims[0].kill()
    t.join(timeout=240)
    assert not t.is_alive() and out["result"].status == "completed", svc.job(job).model_dump()["last_errors"]
    assert not victims[0].is_running()
    assert_survived(svc, job, candles)


def test_a_wedged_driver_is_taken_over_once_its_lock_runs_out(ch_behind_proxy, tmp_path, redis_socket):
    """A driver that is alive but stopped (SIGSTOP stands for an interpreter
    that deadlocked) renews nothing: once its lock runs out, ``execute`` from
    another process takes the job over and finishes it exactly once."""
    srv, _ = ch_behind_proxy
    url = f"http://127.0.0.1:{srv.port}"
    settings = make_settings(tmp_path / "home", redis_socket, CLICKHOUSE_URL=url, **FAST)
    svc = BackfillService(settings)
    candles = ingest(svc, "EURUSD", "M15", "2023-06-01", "2024-01-10")
    job = svc.create_job("EURUSD", "M15", "2023-06-01", "2023-12-31", chunk_size=300, workers=1)
    runner = _spawn({**env_for(settings), **FAST, "CLICKHOUSE_URL": url}, "execute", job)
    family: list[psutil.Process] = []
    try:
        wait_for(lambda: done_chunks(svc, job) >= 2, timeout=180, what="2 chunks")
        wedged = psutil.Process(runner.pid)
        family = [wedged, *wedged.children(recursive=True)]
        wedged.suspend()
        with pytest.raises(InvalidTransition, match="its lock runs out in"):
            svc.execute(job)
        wait_for(lambda: svc.state.driver_ttl_ms(job) < 0, timeout=30, what="the lock to run out")
        result = svc.execute(job)
        assert result.status == "completed", svc.job(job).model_dump()["last_errors"]
    finally:
        for p in family:  # a wedged process is ended, not woken: it could write stale rows
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if runner.poll() is None:
            runner.kill()
        runner.wait(timeout=30)
    assert_survived(svc, job, candles)


# -- the driver process (2, 3, 9, 10) -------------------------------------------------


@pytest.fixture
def proc_env(tmp_path, redis_socket):
    s = make_settings(tmp_path / "home", redis_socket, **FAST)
    env = {**env_for(s), **FAST}
    return env, s


def _queued(env, tmp_path, chunk_size="400", workers="1"):
    import pyarrow.parquet as pq

    t = generate("EURUSD", "M1", "2024-01-01", "2024-01-12")
    path = tmp_path / "c.parquet"
    pq.write_table(t, path)
    run_cli(env, "ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1")
    res = run_cli(env, "start", "--instrument", "EURUSD", "--granularity", "M1",
                  "--start-date", "2024-01-01", "--end-date", "2024-01-10",
                  "--chunk-size", chunk_size, "--workers", workers, "--detach")
    return res.stdout.strip()


def _status(env, job):
    return json.loads(run_cli(env, "status", job, "--format", "json").stdout)


def _assert_exactly_once(env, tmp_path, job):
    s = _status(env, job)
    assert s["status"] == "completed" and s["chunks"]["leased"] == 0
    assert s["candles_done"] == s["candles_total"]
    assert exported_ts_are_unique(env, tmp_path) == s["candles_total"]
    return s


def _spawn(env, *args):
    return subprocess.Popen([sys.executable, "-m", "gpubackfill", *args],
                            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_CRASH_AFTER_WRITE = """
import os, sys
from gpubackfill.service import BackfillService
from gpubackfill.storage.redis import RedisState
RedisState.complete_many = lambda self, *a, **k: os._exit(3)   # dies between insert and record
BackfillService().execute(sys.argv[1])
"""


def test_crash_after_the_insert_before_the_record_does_not_duplicate(proc_env, tmp_path):
    env, _ = proc_env
    job = _queued(env, tmp_path)
    crashed = subprocess.run([sys.executable, "-c", _CRASH_AFTER_WRITE, job],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 3, crashed.stderr
    before = _status(env, job)
    assert before["chunks"]["done"] == 0 and before["chunks"]["leased"] >= 1
    res = run_cli(env, "execute", job)  # takes over from the dead driver at once
    assert "completed" in res.stdout
    s = _assert_exactly_once(env, tmp_path, job)
    # The chunks written before the crash had no manifest row yet (it goes
    # with the record): they were counted, deleted and written again, once.
    assert s["cache_hits"] == 0 and s["rows_written"] == s["candles_total"]


def test_sigkill_of_the_driver_then_execute_resumes(proc_env, tmp_path):
    env, settings = proc_env
    job = _queued(env, tmp_path, chunk_size="150", workers="2")
    watcher = BackfillService(settings)  # reads Redis only: the driver owns the chDB folder
    runner = _spawn(env, "execute", job)
    try:
        wait_for(lambda: done_chunks(watcher, job) >= 3, what="3 chunks")
        runner.kill()
        runner.wait(timeout=30)
        before = _status(env, job)
        assert before["status"] == "running"
        # status says nobody runs it any more, and how to resume (not "ETA 3s" forever).
        assert before["driver"]["gone"] and before["eta_s"] is None
        shown = run_cli(env, "status", job).stdout
        assert job in shown and ("no process holds its driver lock" in shown or "has exited" in shown)
        assert f"nothing runs it; resume with: gpubackfill execute {job}" in shown
        res = run_cli(env, "execute", job)
        assert "completed" in res.stdout
        s = _assert_exactly_once(env, tmp_path, job)
        # Chunks recorded done before the kill were not run again.
        assert s["rows_written"] <= s["candles_total"]
        assert s["chunks"]["done"] == s["chunks_total"] >= before["chunks"]["done"]
    finally:
        if runner.poll() is None:
            runner.kill()


def test_sigterm_interrupts_and_execute_completes_exactly_once(proc_env, tmp_path):
    env, settings = proc_env
    job = _queued(env, tmp_path, chunk_size="150")
    watcher = BackfillService(settings)
    runner = _spawn(env, "execute", job)
    try:
        wait_for(lambda: done_chunks(watcher, job) >= 2, what="2 chunks")
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, err
        assert f"resume with: gpubackfill execute {job}" in err
        s = _status(env, job)
        assert s["status"] == "interrupted" and s["chunks"]["leased"] == 0
        assert run_cli(env, "execute", job).returncode == 0
        s = _assert_exactly_once(env, tmp_path, job)
        assert s["rows_written"] == s["candles_total"]
    finally:
        if runner.poll() is None:
            runner.kill()


def test_two_identical_starts_at_once_do_the_work_once(proc_env, tmp_path):
    env, _ = proc_env
    import pyarrow.parquet as pq

    t = generate("EURUSD", "M1", "2024-01-01", "2024-01-08")
    path = tmp_path / "c.parquet"
    pq.write_table(t, path)
    run_cli(env, "ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1")
    args = ("start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-01-01",
            "--end-date", "2024-01-07", "--chunk-size", "500", "--workers", "1")
    a, b = _spawn(env, *args), _spawn(env, *args)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    codes = [a.returncode, b.returncode]
    # One runs it; the other is refused with one clear line (the embedded
    # engine is taken, or an identical job is active), never a traceback.
    assert sorted(codes)[0] == 0 and sorted(codes)[1] in (1, 2), outs
    err = outs[codes.index(sorted(codes)[1])][1]
    assert "Traceback" not in err
    assert "open in another process" in err or "an identical job" in err, err
    jobs = json.loads(run_cli(env, "status", "--format", "json").stdout)
    done = [j for j in jobs if j["status"] == "completed"]
    assert len(done) == 1 and all(j["rows_written"] == 0 for j in jobs if j not in done)
    total = done[0]["candles_total"]
    assert done[0]["rows_written"] == total
    assert exported_ts_are_unique(env, tmp_path) == total


def test_identical_jobs_are_refused_while_one_is_active(service):
    from gpubackfill.errors import InvalidTransition

    ingest(service, "NZDUSD", "M5")
    first = service.create_job("NZDUSD", "M5", "2024-01-01", "2024-01-31", chunk_size=2000)
    with pytest.raises(InvalidTransition, match=f"identical job {first} is already queued"):
        service.create_job("NZDUSD", "M5", "2024-01-01", "2024-01-31", chunk_size=5000, force=True)
    other_labels = service.create_job("NZDUSD", "M5", "2024-01-01", "2024-01-31", labels=["mfe_mae"])
    assert service.execute(first).status == "completed"
    again = service.create_job("NZDUSD", "M5", "2024-01-01", "2024-01-31")  # the first is final
    assert len({first, other_labels, again}) == 3


def test_tls_urls_are_honoured_and_secrets_stay_hidden(own_redis, tmp_path):
    """rediss:// and https:// really speak TLS (here to plain servers, so the
    handshake fails), and the error names the server without the password."""
    from gpubackfill.errors import DependencyError

    _, sock = own_redis
    with FaultProxy(str(sock)) as proxy:
        plain = make_settings(tmp_path / "home", sock, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")
        BackfillService(plain).state.ping()  # the same server answers in plain text
        settings = make_settings(tmp_path / "home", sock,
                                 REDIS_URL=f"rediss://:hunter2@127.0.0.1:{proxy.port}/0")
        with pytest.raises(DependencyError) as info:
            BackfillService(settings)  # ... but not to a TLS handshake
    text = str(info.value)
    assert "hunter2" not in text and f"rediss://:***@127.0.0.1:{proxy.port}/0" in text


def test_a_second_signal_exits_at_once_and_loses_nothing(proc_env, tmp_path):
    env, settings = proc_env
    job = _queued(env, tmp_path, chunk_size="150", workers="2")
    watcher = BackfillService(settings)
    runner = _spawn(env, "execute", job)
    try:
        wait_for(lambda: done_chunks(watcher, job) >= 2, what="2 chunks")
        runner.send_signal(signal.SIGINT)
        time.sleep(0.05)
        runner.send_signal(signal.SIGINT)
        _, err = runner.communicate(timeout=120)
        assert runner.returncode == 130, err
        assert f"gpubackfill execute {job}" in err and "Traceback" not in err
        s = _status(env, job)
        assert s["status"] == "interrupted" and s["chunks"]["leased"] == 0  # leases handed back
        assert run_cli(env, "execute", job).returncode == 0
        _assert_exactly_once(env, tmp_path, job)
    finally:
        if runner.poll() is None:
            runner.kill()
