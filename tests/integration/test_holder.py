"""The process holding the embedded store serves ``ingest``, ``export``,
``sets`` and ``start --detach`` to other processes (``gpubackfill/serve/holder.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from test_cli import env_for, proc_env, run_cli  # noqa: F401 - fixtures

from gpubackfill.candles.synthetic import generate
from gpubackfill.errors import DependencyError
from gpubackfill.serve import holder
from gpubackfill.storage import export as export_mod
from gpubackfill.storage.clickhouse_store import SeriesKey

H12 = ["enhanced_triple_barrier", "mfe_mae"]


def _labels(service, instrument="EURUSD"):
    candles = generate(instrument, "M15", "2024-01-01", "2024-01-15")
    service.ingest_table(SeriesKey(instrument, "M15"), candles)
    service.start(instrument, "M15", "2024-01-01", "2024-01-15", H12,
                  {"enhanced_triple_barrier": {"horizon": 12}}, chunk_size=400, workers=1)
    return candles.num_rows


def test_an_export_streams_batch_by_batch_and_a_failure_midway_leaves_no_file(
        service, tmp_path, monkeypatch):
    n = _labels(service)
    monkeypatch.setattr(export_mod.batches, "__defaults__", (250,))  # many batches, one query each
    endpoint = holder.Endpoint(service, "test")
    try:
        remote = holder.Remote(service.settings,
                               holder.Holder(os.getpid(), endpoint.port, endpoint.token, "test"))
        seen = []
        write = export_mod.write

        def counting(path, parts, meta):
            return write(path, (seen.append(p.num_rows) or p for p in parts), meta)

        monkeypatch.setattr(export_mod, "write", counting)
        rows, cols, set_id = remote.export_file(tmp_path / "far.parquet", "EURUSD", "M15",
                                                with_candles=True)
        # Arrow record batches as they come (a query may answer in several).
        assert rows == n == sum(seen) and len(seen) >= -(-n // 250) and max(seen) <= 250
        service.export_file(tmp_path / "near.parquet", "EURUSD", "M15", with_candles=True)
        far, near = pq.read_table(tmp_path / "far.parquet"), pq.read_table(tmp_path / "near.parquet")
        assert far.equals(near) and far.schema.metadata == near.schema.metadata
        assert set_id == json.loads(far.schema.metadata[b"gpubackfill"])["label_set"]
        assert [s.set_id for s in remote.label_sets("EURUSD")] == [set_id]

        reads = []
        read = service.store.read_label_range

        def failing(*args, **kwargs):
            reads.append(1)
            if len(reads) == 3:
                raise DependencyError("ClickHouse went away", "clickhouse")
            return read(*args, **kwargs)

        monkeypatch.setattr(service.store, "read_label_range", failing)
        with pytest.raises(DependencyError, match="ClickHouse went away"):
            remote.export_file(tmp_path / "broken.csv", "EURUSD", "M15")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["far.parquet", "near.parquet"]
    finally:
        endpoint.close()
    assert not holder.record_path(service.settings).exists()


def _wait(what, check, timeout=120):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


_GATED_EXECUTE = """
import os, runpy, sys, time
from gpubackfill.storage.redis import RedisState
job, gate = sys.argv[1:]
complete_many, seen = RedisState.complete_many, []
def gated(self, job_id, chunks):
    while sum(seen) >= 2 and not os.path.exists(gate):
        time.sleep(0.05)
    seen.append(len(chunks))
    return complete_many(self, job_id, chunks)
RedisState.complete_many = gated
sys.argv = ["gpubackfill", "execute", job]
runpy.run_module("gpubackfill", run_name="__main__")
"""


def test_a_panel_export_through_the_holder_is_the_same_file(service, tmp_path):
    n = _labels(service) + _labels(service, "GBPUSD")
    endpoint = holder.Endpoint(service, "test")
    try:
        remote = holder.Remote(service.settings,
                               holder.Holder(os.getpid(), endpoint.port, endpoint.token, "test"))
        rows, _, set_id = remote.export_file(tmp_path / "far.parquet", ["EURUSD", "GBPUSD"], "M15",
                                             labels=["mfe_mae"])
    finally:
        endpoint.close()
    service.export_file(tmp_path / "near.parquet", "EURUSD,GBPUSD", "M15", labels=["mfe_mae"])
    far, near = pq.read_table(tmp_path / "far.parquet"), pq.read_table(tmp_path / "near.parquet")
    assert rows == n and far.equals(near) and far.schema.metadata == near.schema.metadata
    assert far.column_names[:3] == ["instrument", "granularity", "ts"] and "tb_label" not in far.column_names


def test_export_ingest_and_detach_while_a_job_runs_in_another_process(proc_env, tmp_path):
    env, settings = proc_env
    m15 = tmp_path / "m15.parquet"
    candles = generate("EURUSD", "M15", "2024-01-01", "2024-01-15")
    pq.write_table(candles, m15)
    run_cli(env, "ingest", str(m15), "--instrument", "EURUSD", "--granularity", "M15")
    run_cli(env, "start", "--instrument", "EURUSD", "--granularity", "M15", "--start-date",
            "2024-01-01", "--end-date", "2024-01-15", "--chunk-size", "300")
    assert not holder.record_path(settings).exists()  # a finished command leaves no record
    m1 = tmp_path / "m1.parquet"
    pq.write_table(generate("EURUSD", "M1", "2024-01-01", "2024-02-01"), m1)
    run_cli(env, "ingest", str(m1), "--instrument", "EURUSD", "--granularity", "M1")
    # Two hundred-odd chunks, one worker; once two chunks are recorded the
    # runner holds its next records until `gate` exists, so the job is still
    # running whatever the speed.
    job = run_cli(env, "start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date",
                  "2024-01-01", "--end-date", "2024-01-31", "--chunk-size", "200", "--workers", "1",
                  "--detach").stdout.strip()
    gate = tmp_path / "gate"
    runner = subprocess.Popen([sys.executable, "-c", _GATED_EXECUTE, job, str(gate)],
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def status():
            assert runner.poll() is None, runner.communicate()
            return json.loads(run_cli(env, "status", job, "--format", "json").stdout)

        _wait("the job to get going", lambda: status()["chunks"]["done"] >= 2)
        assert holder.find(settings).pid == runner.pid

        far = tmp_path / "far.parquet"
        res = run_cli(env, "export", "--instrument", "EURUSD", "--granularity", "M15", "-o", str(far))
        assert f"held by `gpubackfill execute` (pid {runner.pid})" in res.stderr
        gbp = tmp_path / "gbp.csv"
        gbp.write_text("ts,open,high,low,close\n2024-01-01T00:00:00Z,1.1,1.2,1.0,1.15\n"
                       "2024-01-01T00:01:00Z,1.1,1.0,1.0,1.15\n2024-01-01T00:02:00Z,1.1,1.2,1.0,1.15\n")
        res = run_cli(env, "ingest", str(gbp), "--instrument", "GBPUSD", "--granularity", "M1",
                      check=False)  # a rejected row: refused, through the holder too
        assert res.returncode == 2 and "1 of 3 rows rejected" in res.stderr, res.stderr
        rejects = tmp_path / "gbp-rejects.csv"
        res = run_cli(env, "ingest", str(gbp), "--instrument", "GBPUSD", "--granularity", "M1",
                      "--max-rejects", "1", "--rejects", str(rejects))
        assert "read 3 rows: 2 inserted" in res.stdout and f"1 rejected (all listed in {rejects})" in res.stdout
        assert rejects.read_text().splitlines()[1].startswith("1,3,")
        res = run_cli(env, "start", "--instrument", "GBPUSD", "--granularity", "M1", "--start-date",
                      "2024-01-01", "--end-date", "2024-01-02", "--detach")
        queued = res.stdout.strip()
        assert len(queued) == 12 and f"once `gpubackfill execute` (pid {runner.pid})" in res.stderr
        sets = json.loads(run_cli(env, "sets", "--granularity", "M15", "--format", "json").stdout)
        assert len(sets) == 1
        res = run_cli(env, "series", "--format", "json")
        assert f"held by `gpubackfill execute` (pid {runner.pid})" in res.stderr
        listing = {(r["instrument"], r["granularity"]): r for r in json.loads(res.stdout)}
        assert listing[("EURUSD", "M15")]["sets"][0]["rows"] == candles.num_rows
        assert listing[("EURUSD", "M15")]["sets"][0]["stale_chunks"] == 0
        res = run_cli(env, "update", "--granularity", "M15", "--detach")
        assert "labels are up to date" in res.stdout
        # A job that needs the store itself is refused with what to do instead.
        res = run_cli(env, "execute", queued, check=False)
        assert res.returncode == 1 and res.stderr.count("\n") == 1
        assert "queue this one with `start --detach`" in res.stderr
        s = status()
        assert s["status"] == "running" and 2 <= s["chunks"]["done"] < s["chunks_total"]
        assert "cancelled" in run_cli(env, "cancel", job).stdout
        gate.touch()
        runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert not holder.record_path(settings).exists()
    # The same commands with the store free: opened here, as before.
    near = tmp_path / "near.parquet"
    res = run_cli(env, "export", "--instrument", "EURUSD", "--granularity", "M15", "-o", str(near))
    assert "held by" not in res.stderr
    assert pq.read_table(far).equals(pq.read_table(near)) and pq.read_table(far).num_rows == candles.num_rows
    assert json.loads(run_cli(env, "status", queued, "--format", "json").stdout)["status"] == "queued"
    assert run_cli(env, "execute", queued).returncode == 0
    s = json.loads(run_cli(env, "status", queued, "--format", "json").stdout)
    assert s["status"] == "completed" and s["candles_done"] == 2


def test_a_stale_or_silent_holder_record_is_ignored(proc_env, tmp_path):
    import psutil

    env, settings = proc_env
    path = holder.record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = psutil.Process()
    m15 = tmp_path / "m15.parquet"
    n = generate("EURUSD", "M15", "2024-01-01", "2024-01-08").num_rows
    pq.write_table(generate("EURUSD", "M15", "2024-01-01", "2024-01-08"), m15)
    records = [
        {"pid": gone.pid, "started": time.time()},                  # dead
        {"pid": alive.pid, "started": alive.create_time() - 60},    # pid reused since
        {"pid": alive.pid, "started": alive.create_time()},         # alive, but not listening
    ]
    for i, record in enumerate(records):
        path.write_text(json.dumps({**record, "port": 1, "token": "x", "command": "start"}))
        res = run_cli(env, "ingest", str(m15), "--instrument", "EURUSD", "--granularity", "M15")
        assert res.stdout.startswith(f"read {n} rows: {0 if i else n} inserted")
        assert "held by" not in res.stderr and "error" not in res.stderr
