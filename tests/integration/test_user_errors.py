"""What a new user hits first, as real processes: settings that cannot work,
secrets in URLs, a store held by another process, a busy port.  Each ends in
one ``error:`` line on stderr and a non-zero exit, never a traceback, and
never shows a password."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from test_cli import cli, env_for, run_cli  # noqa: F401 - the in-process CLI fixture

from gpubackfill.config import redact_url
from gpubackfill.storage.redis_server import socket_path, stop_server

SECRET = "PASSWORD123"


def one_error_line(res, code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize("url", [
    f"http://default:CH/{SECRET}@127.0.0.1:1",
    f"http://default:CH?{SECRET}@127.0.0.1:1",
    f"http://default:CH#{SECRET}@127.0.0.1:1/db",
    f"http://default:{SECRET}@127.0.0.1:99999",
    f"http://default:{SECRET}@127.0.0.1:abc",
    f"redis://:{SECRET}@h:99999/0",
    f"redis://u:a@b/{SECRET}@h:1/0",
    f"rediss://:{SECRET}@[::1/0",
    f"unix://:{SECRET}@/tmp/x.sock",
    f"http://:{SECRET}@",
    f"{SECRET}@host",
])
def test_redaction_never_fails_and_never_shows_the_password(url):
    shown = redact_url(url)
    assert SECRET not in shown and "PASS" not in shown


def test_redaction_keeps_what_is_not_a_secret():
    assert redact_url("http://default:pw@ch.local:8123/db") == "http://default:***@ch.local:8123/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("http://h/path?mail=a@b") == "http://h/path?mail=a@b"


@pytest.mark.parametrize("name,url", [
    ("CLICKHOUSE_URL", f"http://default:CH/{SECRET}@127.0.0.1:1"),
    ("CLICKHOUSE_URL", f"http://default:CH#{SECRET}@127.0.0.1:1"),
    ("CLICKHOUSE_URL", f"http://default:{SECRET}@127.0.0.1:99999"),
    ("REDIS_URL", f"redis://:CH/{SECRET}@127.0.0.1:1/0"),
    ("REDIS_URL", f"redis://:CH?{SECRET}@127.0.0.1:1/0"),
    ("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:abc/0"),
])
def test_a_password_in_a_url_never_reaches_the_output(tmp_path, name, url):
    res = run_cli({"GPUBACKFILL_HOME": str(tmp_path / "home"), name: url}, "init", check=False)
    line = one_error_line(res, 2)
    assert name in line and SECRET not in res.stderr + res.stdout


def test_a_home_that_cannot_be_a_folder(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_error_line(run_cli({"GPUBACKFILL_HOME": str(afile)}, "status", check=False), 2)
    assert "is not a folder" in line
    line = one_error_line(run_cli({"GPUBACKFILL_HOME": str(afile / "deeper")}, "status",
                                  check=False), 2)
    assert "cannot be created" in line


def test_a_long_home_gets_a_short_redis_socket(tmp_path):
    home = tmp_path / ("h" * 120) / ("g" * 60)
    try:
        res = run_cli({"GPUBACKFILL_HOME": str(home)}, "status", "--format", "json", timeout=60)
        assert res.stdout.strip() == "[]"
        sock = socket_path(home / "redis")
        assert sock.exists() and len(str(sock)) < 100
        # No stray socket beside the home (a cut-off socket path made one).
        assert os.listdir(tmp_path) == ["h" * 120] and os.listdir(home.parent) == ["g" * 60]
    finally:
        stop_server(home / "redis")


def test_a_held_embedded_store_is_one_line(tmp_path):
    home = tmp_path / "home"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import chdb, sys, time; c = chdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(home / "clickhouse")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from gpubackfill.storage.redis_server import ensure_server

        ensure_server(home / "redis")  # not its first start, which would say so on a line of its own
        env = {"GPUBACKFILL_HOME": str(home)}
        line = one_error_line(run_cli(env, "init", check=False, timeout=60), 1)
        assert "is open in another process" in line
    finally:
        holder.kill()
        holder.wait()
        stop_server(home / "redis")


def test_an_unreachable_server_is_one_line(tmp_path, settings):
    env = {**env_for(settings), "CLICKHOUSE_URL": "http://127.0.0.1:1"}
    line = one_error_line(run_cli(env, "init", check=False, timeout=120), 1)
    assert "cannot connect to ClickHouse at http://127.0.0.1:1" in line


def test_serve_on_a_busy_port_is_one_line(tmp_path, settings):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        res = run_cli(env_for(settings), "serve", "--port", str(port), check=False, timeout=60)
        line = one_error_line(res, 2)
        assert f"cannot listen on 127.0.0.1:{port}" in line and "serving on" not in res.stderr
        assert time.monotonic() - t0 < 60


def test_stop_ends_the_bundled_redis_server(tmp_path):
    import psutil

    from gpubackfill.storage.redis_server import server_pid

    home = tmp_path / "home"
    env = {"GPUBACKFILL_HOME": str(home)}
    try:
        assert "no bundled redis-server is running" in run_cli(env, "stop").stdout
        run_cli(env, "status", timeout=60)  # starts it
        pid = server_pid(home / "redis")
        assert pid and psutil.pid_exists(pid)
        assert f"stopped the bundled redis-server of {home}" in run_cli(env, "stop").stdout
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "redis-server still running"
            time.sleep(0.05)
        assert "no bundled redis-server is running" in run_cli(env, "stop").stdout
        assert "REDIS_URL is set" in run_cli({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "stop").stdout
    finally:
        stop_server(home / "redis")


@pytest.mark.parametrize("args,message", [
    (["start", "--instrument", "EURUSD", "--granularity", "M1", "--priority", "urgent"],
     "Invalid value for '--priority': 'urgent' is not one of 'low', 'normal', 'high'."),
    (["ingest", "{folder}", "--instrument", "EURUSD", "--granularity", "M1"], "is a directory"),
    (["export", "--instrument", "EURUSD", "--granularity", "M1", "-o", "{folder}"], "is a directory"),
    (["start", "--granularity", "M1"], "Missing option '--instrument'"),
    (["status", "--bogus"], "No such option '--bogus'"),
    (["--bogus", "status"], "No such option '--bogus'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["dlq", "nosuch"], "No such command 'nosuch'"),
    (["cleanup", "--older-than", "soon"], "'soon' is not a valid float"),
])
def test_click_usage_errors_are_one_line_like_every_other_mistake(cli, tmp_path, args, message):
    r = cli(*[a.format(folder=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: "), r.output
    assert message in r.output and "--help)" in r.output and "Usage:" not in r.output


def test_help_still_shows_usage(cli):
    for args in (["--help"], ["start", "--help"], ["dlq", "--help"]):
        r = cli(*args)
        assert r.exit_code == 0 and r.output.startswith("Usage: "), r.output
    r = cli()  # a group without a command shows its help, as before
    assert "Usage: " in r.output and "error:" not in r.output


def test_a_usage_error_in_a_real_process_is_one_line(tmp_path):
    res = run_cli({"GPUBACKFILL_HOME": str(tmp_path / "home")}, "start", "--instrument", "EURUSD",
                  "--granularity", "M1", "--priority", "urgent", check=False)
    line = one_error_line(res, 2)
    assert "'urgent' is not one of" in line and line.endswith(" start --help)")


def _store_series(service, *names, gran="H1", start="2024-01-01", end="2024-01-04"):
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.storage.clickhouse_store import SeriesKey

    for name in names:
        service.ingest_table(SeriesKey(name, gran), generate(name, gran, start, end))


MAJORS = ("EURUSD", "EURGBP", "EURJPY", "EURCHF", "GBPUSD", "USDJPY", "AUDUSD", "NZDUSD", "USDCAD")


def test_an_unknown_instrument_names_a_handful_of_near_matches_not_every_series(cli, service):
    _store_series(service, *MAJORS)
    r = cli("start", "--instrument", "EURUSX", "--granularity", "H1", "--detach")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: no candles for EURUSX H1 in the store") and "EURUSD H1" in r.output
    assert 1 <= r.output.count(" H1") - 1 <= 5, r.output  # the asked series, then at most 5 others
    r = cli("start", "--instrument", "QQQ", "--granularity", "H1", "--detach")
    assert r.exit_code == 2 and r.output.count(" H1") == 1 and "see `gpubackfill series`" in r.output
    r = cli("start", "--instrument", "*", "--granularity", "M1", "--detach")
    assert r.exit_code == 2 and "no instrument has M1 candles (the store has H1" in r.output
    assert "EURUSD" not in r.output
    assert json.loads(cli("status", "--format", "json").output) == []


def test_an_instrument_without_any_candle_is_an_error_a_pair_outside_the_range_is_skipped(cli, service):
    _store_series(service, "EURUSD")
    _store_series(service, "GBPUSD", start="2023-01-01", end="2023-01-04")
    _store_series(service, "USDJPY", gran="H4")
    r = cli("start", "--instrument", "EURUSD,NOPE", "--granularity", "H1", "--start-date", "2024-01-01",
            "--end-date", "2024-01-02", "--detach")
    assert r.exit_code == 2 and r.output == "error: no candles for NOPE H1 in the store " \
        "(ingest some first; the store has 3 series: see `gpubackfill series`)\n", r.output
    assert json.loads(cli("status", "--format", "json").output) == []  # nothing queued
    # GBPUSD H1 has candles, not in the range; USDJPY has some, at H4 only: both skipped.
    r = cli("start", "--instrument", "EURUSD,GBPUSD,USDJPY", "--granularity", "H1",
            "--start-date", "2024-01-01", "--end-date", "2024-01-02", "--detach")
    assert r.exit_code == 0, r.output
    assert "skipped (no candles in the range): GBPUSD H1, USDJPY H1" in r.output
    [job] = json.loads(cli("status", "--format", "json").output)
    assert job["skipped"] == ["GBPUSD H1", "USDJPY H1"]
