"""Leases: a chunk's (``Heartbeat``, renewed by one keeper thread per process,
and the write fence) and a driver's owner id (host:pid:nonce)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence

import psutil

from ..common.logs import log
from ..errors import DependencyError, GpubackfillError
from ..storage.redis import RedisState
from .task import ChunkTask
from .watchdog import thread_stack


def new_owner() -> str:
    """host:pid:nonce, unique per driver."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_owner(owner: str) -> bool:
    """True when ``owner`` (host:pid:nonce) names a process of this host that is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not psutil.pid_exists(int(pid))


class LeaseLost(GpubackfillError):
    """Another worker holds this chunk now (our lease expired): do not write."""


class _LeaseKeeper:
    """One thread per process that renews the leases of the chunks running
    in it (a thread per chunk would start and stop thousands of threads),
    and takes back those past their deadline."""

    def __init__(self) -> None:
        self._held: dict[int, Heartbeat] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, beat: Heartbeat) -> None:
        with self._lock:
            self._held[id(beat)] = beat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="lease-keeper")
                self._thread.start()

    def remove(self, beat: Heartbeat) -> None:
        with self._lock:
            self._held.pop(id(beat), None)

    def _run(self) -> None:
        while True:
            with self._lock:
                beats = list(self._held.values())
            now = time.monotonic()
            for beat in beats:
                if beat.deadline is not None and now >= beat.deadline:
                    beat.overdue(now)
                    continue
                if not beat.lost and now >= beat.due:
                    try:
                        beat.keep()
                    except DependencyError:
                        pass  # Redis away for a moment: the fence decides before writing
            self._wake.wait(0.5)


_KEEPER = _LeaseKeeper()


class Heartbeat:
    """Keeps the chunk's lease renewed while it runs, and those of the
    chunks ``behind`` it in its task, which have not started (or, with
    ``behind_started``, started with it: a shared run's); ``fence()``
    before writing."""

    def __init__(self, state: RedisState, task: ChunkTask, lease_ms: int,
                 behind: Sequence[ChunkTask] = (), behind_started: bool = False):
        self.state, self.task, self.lease_ms = state, task, lease_ms
        self.behind = [(t.index, t.token) for t in behind]
        self.behind_started = behind_started
        self.lost = False
        self.started = time.monotonic()
        self.due = self.started + lease_ms / 3000
        self.deadline = self.started + task.timeout_s if task.timeout_s > 0 else None
        self.take_back_at: float | None = None
        self.reason = ""
        self.thread = threading.get_ident()

    def __enter__(self) -> Heartbeat:
        _KEEPER.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _KEEPER.remove(self)

    def renew(self) -> bool:
        ok = self.state.renew_lease(self.task.job_id, self.task.index, self.task.token, self.lease_ms)
        self.lost = self.lost or not ok
        self.due = time.monotonic() + self.lease_ms / 3000
        return ok

    def keep(self) -> None:
        """The keeper's renewal.  The chunks behind this one are kept only
        while this one is (the driver stopped keeping them when their task
        started): a chunk taken back past its deadline, or a worker gone,
        lets their leases run out as well."""
        if self.renew() and self.behind:
            if self.behind_started:
                self.state.renew_leases(self.task.job_id, self.behind, self.lease_ms)
            else:
                self.state.keep_waiting(self.task.job_id, self.behind, self.lease_ms)

    def overdue(self, now: float) -> None:
        """Past the deadline (runs on the keeper thread).

        First the lease is renewed one last time and never again, and the
        thread's stack is logged.  The attempt is failed (the chunk queued
        again, or dead-lettered once its attempts are used up) only when
        that last lease is about to run out: a run that passed its fence
        just before the deadline keeps the whole lease period it was
        promised to finish its write, as with any expired lease.
        """
        task = self.task
        if self.take_back_at is None:
            still_ours = False
            if not self.lost:
                try:
                    still_ours = self.renew()
                except DependencyError:
                    pass
            self.lost = True
            if not still_ours:
                self.deadline = None  # taken back already: nothing more to do
                return
            margin = min(2.0, self.lease_ms / 4000)
            self.take_back_at = now + self.lease_ms / 1000 - margin
            stack = thread_stack(self.thread)
            self.reason = (f"timeout: chunk {task.index} ran {now - self.started:.0f}s, past its "
                           f"deadline of {task.timeout_s:g}s; taken back\n{stack}")
            log.error("%s", self.reason, extra={"job_id": task.job_id, "chunk": task.index})
            try:
                self.state.note(task.job_id, "chunk_timeout", self.reason[:4000])
            except DependencyError:
                pass
            return
        if now < self.take_back_at:
            return
        self.deadline = None
        try:
            self.state.fail(task.job_id, task.index, task.token, self.reason, task.max_attempts,
                            retryable=True, category="transient",
                            detail={"digest": "chunk-timeout", "retries": 0})
        except DependencyError:
            pass  # Redis away: the lease is no longer renewed, so it expires instead

    def held(self) -> None:
        """Raise LeaseLost if the keeper found the lease taken back; no
        round trip (for a chunk whose start renewed it a moment ago and
        whose write is fenced later, as a shared insert's chunks are)."""
        if self.lost:
            self._taken_back()

    def _taken_back(self) -> None:
        self.lost = True
        raise LeaseLost(f"chunk {self.task.index} of job {self.task.job_id} was taken back")

    def fence(self) -> bool:
        """Before the chunk writes: raise LeaseLost unless the lease is still
        ours (and renew it); False when a run under the same lease reached
        its write before (``RedisState.fence_write``), so the write must
        replace rows rather than trust the plan's 'fresh' hint.

        A stale worker that passed this check has a whole lease period
        before anyone else may claim the chunk, so its write cannot land
        after the next owner's.
        """
        got = 0 if self.lost else self.state.fence_write(self.task.job_id, self.task.index, self.task.token,
                                                         self.lease_ms)
        self.due = time.monotonic() + self.lease_ms / 3000
        if not got:
            self._taken_back()
        return got == 1
