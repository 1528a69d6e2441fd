"""The bundled redis-server a command starts: said once, left running while
used, stopped by itself once idle (and started again by the next command),
stopped by ``gpubackfill stop``; its idle stop never outlives it."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from test_cli import run_cli

from gpubackfill.config import Settings
from gpubackfill.storage.redis_idle import PID as IDLE_PID
from gpubackfill.storage.redis_server import connect, server_pid, stop_server

pytestmark = pytest.mark.integration

IDLE_S = 2


def alive(pid: int | None) -> bool:
    return bool(pid) and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def wait_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + 60
    while alive(pid):
        assert time.monotonic() < deadline, f"{what} still running"
        time.sleep(0.05)


def idle_stop_pid(rdir: Path) -> int:
    return int((rdir / IDLE_PID).read_text())


def notices(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("started the bundled redis-server")]


def test_the_bundled_server_stops_when_idle_and_the_next_command_starts_it(tmp_path, capfd):
    home = tmp_path / "home"
    rdir = home / "redis"
    env = {"GPUBACKFILL_HOME": str(home), "GPUBACKFILL_REDIS_IDLE_STOP_S": str(IDLE_S)}
    try:
        # The first start for a home says so, once.
        res = run_cli(env, "status", "--format", "json", timeout=60)
        assert res.stdout.strip() == "[]"
        assert notices(res.stderr) == [
            f"started the bundled redis-server for {home} (left running for the next commands; "
            f"it stops after {IDLE_S} s with no client, or with `gpubackfill stop`)"], res.stderr
        first, watcher = server_pid(rdir), idle_stop_pid(rdir)
        assert first and watcher
        # The command has exited: no client is left, and the server stops.
        wait_gone(first, "the idle redis-server")
        wait_gone(watcher, "its idle stop")

        # A client keeps it running, however long it stays.
        client, _ = connect(Settings.from_env(env, dotenv=False))
        second, watcher = server_pid(rdir), idle_stop_pid(rdir)
        assert alive(second) and second != first
        time.sleep(3 * IDLE_S)
        assert alive(second) and alive(watcher) and client.ping()
        client.close()
        client.connection_pool.disconnect()
        wait_gone(second, "the redis-server its last client left")

        # Started again by the next command, without a word.
        res = run_cli(env, "status", "--format", "json", timeout=60)
        assert res.stdout.strip() == "[]" and notices(res.stderr) == []
        third, watcher = server_pid(rdir), idle_stop_pid(rdir)
        assert alive(third) and third != second
        assert notices(capfd.readouterr().err) == []  # nor when this process started it
    finally:
        stop_server(rdir)


def test_stop_ends_the_server_and_its_idle_stop(tmp_path):
    home = tmp_path / "home"
    rdir = home / "redis"
    env = {"GPUBACKFILL_HOME": str(home)}  # the default idle time: it will not stop by itself here
    try:
        res = run_cli(env, "status", timeout=60)
        assert "it stops after 30 min with no client" in res.stderr
        server, watcher = server_pid(rdir), idle_stop_pid(rdir)
        assert alive(server) and alive(watcher)
        assert f"stopped the bundled redis-server of {home}" in run_cli(env, "stop").stdout
        wait_gone(server, "redis-server")
        wait_gone(watcher, "its idle stop")
    finally:
        stop_server(rdir)


def test_an_idle_time_of_0_keeps_it_running(tmp_path):
    home = tmp_path / "home"
    rdir = home / "redis"
    env = {"GPUBACKFILL_HOME": str(home), "GPUBACKFILL_REDIS_IDLE_STOP_S": "0"}
    try:
        res = run_cli(env, "status", timeout=60)
        assert "(left running for the next commands; `gpubackfill stop` stops it)" in res.stderr
        assert alive(server_pid(rdir)) and not (rdir / IDLE_PID).exists()
    finally:
        stop_server(rdir)
