"""The bundled redis-server's idle stop: a small process that shuts the
server down after ``GPUBACKFILL_REDIS_IDLE_STOP_S`` seconds with no client,
so that a laptop does not collect daemons.  Redis has no idle shutdown of
its own.

``redis_server.ensure_server`` starts one per server it starts::

    python -m gpubackfill.storage.redis_idle DIRECTORY SOCKET SECONDS

It detaches (a process of its own session, reparented to init), polls the
server's client list ten times per idle period (every 30 s at most), and
exits as soon as the server is gone or restarted.  A command that is connecting holds ``use.lock``
shared (``redis_server.in_use``) from its first ping until its own
connection is open; the stop takes it exclusively, counts again, and holds
it until the server process has exited, so no command is left holding a
connection to a server that is going away.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

NAME = "gpubackfill-idle-stop"  # its own connection's name, never counted as a client
USE_LOCK = "use.lock"
PID = "idle-stop.pid"


def poll_seconds(idle_s: float) -> float:
    """Often enough to stop within a tenth of the idle time (a fifth of a
    second at least, half a minute at most): no busy loop, no long overrun."""
    return min(max(idle_s / 10, 0.2), 30.0)


def watch(directory: Path, sock: Path, idle_s: float) -> None:
    """Shut the server of ``directory`` (listening on ``sock``) down once it
    has had no client for ``idle_s`` seconds; return when it is gone
    (stopped by us or not)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    poll = poll_seconds(idle_s)
    # No retries: a server that went away is the answer, not a fault.
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=poll + 10, client_name=NAME,
                         retry=Retry(NoBackoff(), 0))
    try:
        server = client.info("server")
    except redis.exceptions.RedisError:
        return
    run_id, pid = server["run_id"], int(server["process_id"])

    def clients() -> int:
        # A restarted server is another watcher's: reconnecting to it must not count.
        if client.info("server")["run_id"] != run_id:
            raise redis.exceptions.ConnectionError("restarted")
        return sum(1 for c in client.client_list() if c.get("name") != NAME)

    busy = time.monotonic()
    while True:
        try:
            # The pause between polls: a wait on a list nobody fills, which
            # also ends at once when the server shuts down (gpubackfill stop).
            client.blpop([NAME], timeout=poll)
            if clients():
                busy = time.monotonic()
                continue
            if time.monotonic() - busy < idle_s:
                continue
            with open(directory / USE_LOCK, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a command is connecting: it will be a client
                if clients():
                    busy = time.monotonic()
                    continue
                try:
                    client.shutdown(save=True)
                except redis.exceptions.ConnectionError:
                    pass  # shutdown closes the connection
                _wait_gone(pid)
            return
        except redis.exceptions.RedisError:
            return  # stopped (gpubackfill stop) or restarted: not ours any more


def _wait_gone(pid: int, limit: float = 60.0) -> None:
    """Until the server process has exited (it removes its socket and pid
    file first), so that the next command starts a fresh one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    directory, sock, idle_s = Path(argv[0]), Path(argv[1]), float(argv[2])
    # Detach: the command that started us waits only for this first process,
    # which records the watcher's pid before it exits.
    child = os.fork()
    if child:
        (directory / PID).write_text(f"{child}\n")
        os._exit(0)
    os.chdir("/")  # hold no folder of the command's
    try:
        watch(directory, sock, idle_s)
    finally:
        try:
            if (directory / PID).read_text().strip() == str(os.getpid()):
                (directory / PID).unlink()
        except OSError:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
