"""The gpubackfill CLI: through click's runner and as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gpubackfill.candles.synthetic import generate
from gpubackfill.cli import main


def env_for(settings) -> dict[str, str]:
    return {"GPUBACKFILL_HOME": str(settings.home), "REDIS_URL": settings.redis_url,
            "GPUBACKFILL_REDIS_PREFIX": settings.redis_prefix,
            "CLICKHOUSE_DATABASE": settings.clickhouse_database, "BATCH_MAX_WORKERS": "2"}


@pytest.fixture
def cli(settings, monkeypatch):
    """Run the CLI in this process (sharing its chDB engine)."""
    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


@pytest.fixture
def csv_file(tmp_path):
    t = generate("EURUSD", "M15", "2024-01-01", "2024-03-01")
    path = tmp_path / "eurusd.csv"
    pcsv.write_csv(t.rename_columns(["Time", "Open", "High", "Low", "Close", "Volume"]), path)
    return path, t.num_rows


def test_ingest_start_status_export_metrics(cli, csv_file, tmp_path):
    path, n = csv_file
    r = cli("ingest", str(path), "--instrument", "eurusd", "--granularity", "m15")
    assert r.exit_code == 0 and f"read {n} rows: {n} inserted" in r.output
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M15")
    assert f"0 inserted, 0 updated, {n} already present, 0 rejected" in r.output
    r = cli("start", "--instrument", "EURUSD", "--granularity", "M15", "--start-date", "2024-01-01",
            "--end-date", "2024-02-29", "--labels", "enhanced_triple_barrier", "mfe_mae",
            "--param", "enhanced_triple_barrier.horizon=12", "--chunk-size", "700")
    assert r.exit_code == 0, r.output
    assert "completed" in r.output
    r = cli("status", "--format", "json")
    jobs = json.loads(r.output)
    assert len(jobs) == 1 and jobs[0]["status"] == "completed" and jobs[0]["candles_done"] == n
    out = tmp_path / "labels.parquet"
    r = cli("export", "--instrument", "EURUSD", "--granularity", "M15", "--labels",
            "enhanced_triple_barrier,mfe_mae", "--param", "enhanced_triple_barrier.horizon=12",
            "-o", str(out))
    assert r.exit_code == 0 and f"wrote {n:,} rows" in r.output
    t = pq.read_table(out)
    assert t.column_names[:2] == ["ts", "tb_label"] and "mfe_bars" in t.column_names
    m = json.loads(cli("metrics", "--format", "json").output)
    assert m["candles_processed"] == n and m["jobs_by_status"] == {"completed": 1}


def test_ingest_reports_rejected_rows(cli, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("ts,open,high,low,close\n"
                    "2024-01-01T00:00:00Z,1.1,1.2,1.0,1.15\n"
                    "2024-01-01T00:01:00Z,1.1,1.0,1.0,1.15\n"      # high below close
                    "2024-01-01T00:00:00Z,1.1,1.2,1.0,1.15\n"      # duplicate of row 0
                    "2024-01-01T00:02:00Z,1.1,1.2,1.0,-1\n")       # negative price
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1", "--max-rejects", "3")
    assert r.exit_code == 0
    assert "1 inserted" in r.output and "3 rejected" in r.output
    assert "rejected row 1" in r.output and "high is below max(open, close)" in r.output
    assert "rejected row 2" in r.output and "unsorted or duplicate" in r.output
    assert "rejected row 3" in r.output and "zero or negative" in r.output


START = ["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-01-01",
         "--end-date", "2024-02-01"]


@pytest.mark.parametrize("args,message", [
    (["status", "nope"], "error: no job 'nope'"),
    (["pause", "nope"], "error: no job 'nope'"),
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-02-30",
      "--end-date", "2024-03-01"], "error: bad start date '2024-02-30'"),
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-03-01",
      "--end-date", "2024-02-01"], "is not after start date"),
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-01-01",
      "--end-date", "2024-02-01", "--labels", "triple"], "error: unknown label 'triple'"),
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-01-01",
      "--end-date", "2024-02-01", "--param", "mfe_mae.width=3"], "unknown parameter(s) for mfe_mae: width"),
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-01-01",
      "--end-date", "2024-02-01", "--param", "horizon=3"], "--param must look like LABEL.KEY=VALUE"),
    (["start", "--instrument", "EURUSD'; DROP TABLE candles", "--granularity", "M1",
      "--start-date", "2024-01-01", "--end-date", "2024-02-01"], "error: invalid instrument"),
    (["ingest", "/no/such.csv", "--instrument", "EURUSD", "--granularity", "M1"], "no such file"),
    (["export", "--instrument", "EURUSD", "--granularity", "M1", "-o", "x.txt"], "must end in .parquet or .csv"),
    (["cleanup", "--older-than", "-1"], "--older-than must be a number of days >= 0"),
    (["cleanup", "--older-than", "nan"], "--older-than must be a number of days >= 0"),
    (START + ["--chunk-size", "0"], "chunk size must be 1..100,000,000, got 0"),
    (START + ["--workers", "0"], "workers must be 1..1024, got 0"),
    (START + ["--chunk-size", "18446744073709551616"], "chunk size must be 1..100,000,000"),
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2024-01-01",
      "--end-date", "9999-12-31"], "end date '9999-12-31' is outside 1900-01-01..2299-12-31"),
    (["export", "--instrument", "EURUSD", "--granularity", "M1", "--end-date", "9999-12-31",
      "-o", "x.csv"], "end date '9999-12-31' is outside"),
    (["export", "--instrument", "EURUSD", "--granularity", "M1", "-o", "/nonexistent/dir/x.csv"],
     "no folder /nonexistent/dir"),
])
def test_user_mistakes_get_one_line_and_exit_2(cli, args, message):
    r = cli(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1


def test_unreachable_redis_names_the_url(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    r = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert r.exit_code == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in r.output
    assert "s3cret" not in r.output and "Traceback" not in r.output


def test_bad_settings_are_reported(monkeypatch):
    monkeypatch.setenv("BATCH_CHUNK_SIZE", "lots")
    r = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert r.exit_code == 2 and "error: BATCH_CHUNK_SIZE must be an integer, got 'lots'" in r.output


# ---------------------------------------------------------------------------
# Real processes: their own chDB folder (one engine per folder per process).


def run_cli(env, *args, timeout=300, check=True):
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-m", "gpubackfill", *args], env=full,
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{args} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def exported_ts_are_unique(env, tmp_path, instrument="EURUSD", granularity="M1") -> int:
    """Export a series' labels in a process; assert no duplicate rows; return the count."""
    out = tmp_path / f"export-{instrument}-{granularity}.parquet"
    run_cli(env, "export", "--instrument", instrument, "--granularity", granularity, "-o", str(out))
    ts = pq.read_table(out).column("ts").to_numpy()
    assert len(ts) == len(set(ts.tolist()))
    return len(ts)


@pytest.fixture
def proc_env(tmp_path, redis_socket):
    from conftest import make_settings

    s = make_settings(tmp_path / "home", redis_socket)
    return env_for(s), s


def test_cli_as_processes_and_control_from_a_second_process(proc_env, tmp_path):
    env, settings = proc_env
    # A task per chunk: the job stays long enough (~150 tasks) to be paused,
    # resumed and cancelled from here while it runs.
    env = {**env, "GPUBACKFILL_TASK_CANDLES": "1"}
    t = generate("EURUSD", "M1", "2024-01-01", "2024-02-01")
    path = tmp_path / "c.parquet"
    pq.write_table(t, path)
    run_cli(env, "ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1")
    res = run_cli(env, "start", "--instrument", "EURUSD", "--granularity", "M1",
                  "--start-date", "2024-01-01", "--end-date", "2024-01-31", "--chunk-size", "300",
                  "--workers", "1", "--detach")
    job = res.stdout.strip()
    assert len(job) == 12 and "gpubackfill execute" in res.stderr
    runner = subprocess.Popen([sys.executable, "-m", "gpubackfill", "execute", job],
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        def status():
            return json.loads(run_cli(env, "status", job, "--format", "json").stdout)

        deadline = time.time() + 120
        while status()["chunks"]["done"] < 3:
            assert time.time() < deadline and runner.poll() is None
            time.sleep(0.2)
        assert "paused" in run_cli(env, "pause", job).stdout
        # Chunks already running finish (however long a loaded machine
        # takes), then no new ones start.
        deadline = time.time() + 60
        while status()["chunks"]["leased"]:
            assert time.time() < deadline, "running chunks did not finish after the pause"
            time.sleep(0.2)
        s1 = status()
        time.sleep(1.5)
        s2 = status()
        assert s1["status"] == s2["status"] == "paused"
        assert s1["chunks"]["done"] == s2["chunks"]["done"] < s2["chunks_total"]
        assert s2["chunks"]["leased"] == 0
        r = run_cli(env, "resume", job, check=False)
        assert r.returncode == 0 and "running" in r.stdout
        r = run_cli(env, "resume", job, check=False)  # not paused any more
        assert r.returncode == 2 and "cannot resume job" in r.stderr
        while status()["chunks"]["done"] < s2["chunks"]["done"] + 3:
            time.sleep(0.2)
        assert "cancelled" in run_cli(env, "cancel", job).stdout
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 1, err
        s = status()
        assert s["status"] == "cancelled" and s["chunks"]["leased"] == 0
        assert 0 < s["chunks"]["done"] < s["chunks_total"]
        # Every chunk recorded done wrote its rows exactly once.
        assert exported_ts_are_unique(env, tmp_path) == s["rows_written"]
    finally:
        if runner.poll() is None:
            runner.kill()


def test_help_and_status_do_not_need_clickhouse(proc_env):
    env, _ = proc_env
    assert "Backfill machine-learning labels" in run_cli(env, "--help").stdout
    assert run_cli(env, "status", "--format", "json").stdout.strip() == "[]"


def _queued_job(env, tmp_path, chunk_size="300"):
    t = generate("EURUSD", "M1", "2024-01-01", "2024-01-20")
    path = tmp_path / "c.parquet"
    pq.write_table(t, path)
    run_cli(env, "ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1")
    res = run_cli(env, "start", "--instrument", "EURUSD", "--granularity", "M1",
                  "--start-date", "2024-01-01", "--end-date", "2024-01-18",
                  "--chunk-size", chunk_size, "--workers", "1", "--detach")
    return res.stdout.strip()


def test_interrupt_leaves_a_resumable_job_that_completes_exactly_once(proc_env, tmp_path):
    import signal

    env, _ = proc_env
    # A task per chunk: the job must still be running when the signal comes
    # (five 300-candle chunks to a task finished it between two status polls).
    env = {**env, "GPUBACKFILL_TASK_CANDLES": "1"}
    job = _queued_job(env, tmp_path)
    runner = subprocess.Popen([sys.executable, "-m", "gpubackfill", "execute", job],
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while json.loads(run_cli(env, "status", job, "--format", "json").stdout)["chunks"]["done"] < 2:
            assert time.time() < deadline and runner.poll() is None
            time.sleep(0.2)
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 130, err
        assert f"resume with: gpubackfill execute {job}" in err
        s = json.loads(run_cli(env, "status", job, "--format", "json").stdout)
        assert s["status"] == "interrupted" and s["chunks"]["leased"] == 0
        assert s["chunks"]["done"] < s["chunks_total"]
        res = run_cli(env, "execute", job)
        assert "completed" in res.stdout
        s = json.loads(run_cli(env, "status", job, "--format", "json").stdout)
        assert s["candles_done"] == s["candles_total"] == s["rows_written"]
        assert exported_ts_are_unique(env, tmp_path) == s["candles_total"]
    finally:
        if runner.poll() is None:
            runner.kill()


def test_monitor_once_shows_the_job(proc_env, tmp_path):
    env, _ = proc_env
    job = _queued_job(env, tmp_path, chunk_size="5000")
    out = run_cli(env, "monitor", job, "--once").stdout
    assert f"job {job}" in out and "queued" in out and "pending" in out


def test_demo_runs_from_a_fresh_home(proc_env):
    env, _ = proc_env
    res = run_cli(env, "demo", "--instruments", "EURUSD", "--years", "0.1")
    assert "backfilled" in res.stdout and "triple-barrier labels" in res.stdout
    assert "gpubackfill export" in res.stdout
    jobs = json.loads(run_cli(env, "status", "--format", "json").stdout)
    assert [j["status"] for j in jobs] == ["completed"]


def test_unreachable_clickhouse_names_the_url(tmp_path, monkeypatch, redis_socket):
    monkeypatch.setenv("CLICKHOUSE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("REDIS_URL", f"unix://{redis_socket}")
    path = tmp_path / "c.csv"
    path.write_text("ts,open,high,low,close\n2024-01-01T00:00:00Z,1,1,1,1\n")
    r = CliRunner().invoke(main, ["ingest", str(path), "--instrument", "EURUSD",
                                  "--granularity", "M1"], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "ClickHouse at http://127.0.0.1:1" in r.output and "Traceback" not in r.output


def test_a_newest_first_file_is_sorted_and_duplicates_still_rejected(cli, tmp_path):
    t = generate("EURUSD", "M15", "2024-01-01", "2024-01-05")
    n = t.num_rows
    rows = t.to_pylist()[::-1]
    rows.insert(5, dict(rows[4]))  # a duplicate of the row before it
    path = tmp_path / "newest_first.csv"
    import pyarrow as pa

    pcsv.write_csv(pa.Table.from_pylist(rows), path)
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M15", "--max-rejects", "1")
    assert r.exit_code == 0, r.output
    assert "not in time order (newest first?): sorted them by time" in r.output
    assert f"read {n + 1} rows: {n} inserted" in r.output and "1 rejected" in r.output
    assert "rejected row 5" in r.output and "duplicate" in r.output


def test_candles_of_another_granularity_are_refused(cli, tmp_path):
    path = tmp_path / "daily.csv"
    pcsv.write_csv(generate("EURUSD", "D1", "2023-01-01", "2024-01-01"), path)
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "most often 1 day apart" in r.output and "not 1 minute as M1 means" in r.output
    assert "it looks like D1" in r.output
    assert json.loads(cli("sets", "--format", "json").output) == []
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "D1")  # weekends allowed
    assert r.exit_code == 0 and "0 rejected" in r.output


def test_a_range_without_candles_is_an_error_naming_the_series_range(cli, csv_file):
    path, _ = csv_file
    cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M15")
    r = cli("start", "--instrument", "EURUSD", "--granularity", "M15", "--start-date", "2023-01-01",
            "--end-date", "2023-01-31")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "no EURUSD M15 candles from 2023-01-01 to 2023-01-31; the series has 2024-01-01" in r.output


def test_small_rates_inclusive_end_dates_and_help_read_right(cli, csv_file, monkeypatch):
    from gpubackfill.cli.demo import command_name
    from gpubackfill.jobs.eta import rate_text

    assert [rate_text(x) for x in (12_345_678, 850_400, 420.4, 0)] == ["12.3M", "850k", "420", "0"]
    path, _ = csv_file
    cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M15")
    r = cli("start", "--instrument", "EURUSD", "--granularity", "M15", "--start-date", "2024-01-01",
            "--end-date", "2024-01-02", "--labels", "mfe_mae")
    assert "0.0M" not in r.output and "candles/min" in r.output
    monkeypatch.setenv("COLUMNS", "200")
    table = cli("status").output
    assert "2024-01-01..2024-01-02" in table and "2024-01-03" not in table
    job = json.loads(cli("status", "--format", "json").output)[0]["job_id"]
    monkeypatch.setenv("COLUMNS", "70")  # a narrow terminal: the id stays whole
    assert job in cli("status").output
    assert "Resume a paused job." in cli("--help").output
    monkeypatch.setenv("PATH", "/nonexistent")
    assert command_name().endswith(" -m gpubackfill")
