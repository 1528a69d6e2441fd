"""The rules of a job's life, as pure data and functions (no Redis, no Dask).

Two layers:

* the transition tables of a job and of a chunk, and the rule that ends a
  job.  Redis applies them atomically: its Lua scripts receive ``TABLES``
  as JSON and look every move up there, so Python and Redis cannot
  disagree;
* ``DriverMachine``, the decisions of the loop that runs a job: it is told
  what happened (events) and answers what to do (instructions), in the
  style of dask.distributed's ``worker_state_machine``.  ``engine/driver.py``
  carries the instructions out against Redis and the cluster.

Job::

    queued ──execute──> running ──complete──> completed | completed_with_errors
      │                  │  │ └──fail──> failed ──execute──> running
      │                  │  └──interrupt──> interrupted ──execute──> running
      │                  └──pause──> paused ──resume──> running
      └──pause──> paused        (cancel from any non-final state -> cancelled)

Chunk::

    pending ──claim──> leased ──complete──> done
                         ├──retry / release / expire──> pending
                         └──give_up──> failed ──requeue──> pending
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import InvalidTransition

JOB_TRANSITIONS: dict[str, dict[str, str]] = {
    "queued": {"execute": "running", "pause": "paused", "cancel": "cancelled"},
    "running": {"pause": "paused", "cancel": "cancelled", "complete": "completed",
                "complete_with_errors": "completed_with_errors", "fail": "failed",
                "interrupt": "interrupted"},
    "paused": {"resume": "running", "execute": "running", "cancel": "cancelled"},
    "interrupted": {"execute": "running", "cancel": "cancelled", "pause": "paused"},
    "failed": {"execute": "running", "cancel": "cancelled"},
    "completed": {},
    "completed_with_errors": {"execute": "running"},
    "cancelled": {},
}

FINAL_JOB_STATES = frozenset({"completed", "completed_with_errors", "cancelled", "failed"})
ACTIVE_JOB_STATES = frozenset({"queued", "running", "paused", "interrupted"})

CHUNK_TRANSITIONS: dict[str, dict[str, str]] = {
    "pending": {"claim": "leased"},
    "leased": {"complete": "done", "retry": "pending", "release": "pending",
               "expire": "pending", "give_up": "failed", "split": "pending"},
    "done": {},
    "failed": {"requeue": "pending"},
}

# The event that ends a running job once every chunk is settled, by whether
# any chunk failed.  (The Lua ``settle`` reads it from TABLES.)
SETTLE_EVENTS = {"clean": "complete", "with_errors": "complete_with_errors"}

JOB_STATES = tuple(JOB_TRANSITIONS)
CHUNK_STATES = tuple(CHUNK_TRANSITIONS)
# A started series of a job that stopped shows the job's status (paused,
# interrupted, cancelled, failed, or queued again), not "running".
SERIES_STATES = ("pending", "running", "completed", "completed_with_errors", "failed",
                 "paused", "interrupted", "cancelled", "queued")
STOPPED_JOB_STATES = frozenset({"queued", "paused", "interrupted", "cancelled", "failed"})

# What the Redis scripts are given: the single definition of every move.
TABLES = json.dumps({"job": JOB_TRANSITIONS, "chunk": CHUNK_TRANSITIONS, "settle": SETTLE_EVENTS})


def next_job_status(status: str, event: str) -> str:
    """The status after ``event``, or InvalidTransition saying why not."""
    try:
        return JOB_TRANSITIONS[status][event]
    except KeyError:
        if status not in JOB_TRANSITIONS:
            raise InvalidTransition(f"unknown job status {status!r}") from None
        allowed = ", ".join(JOB_TRANSITIONS[status]) or "nothing (it is final)"
        raise InvalidTransition(f"cannot {event} a job that is {status}; allowed: {allowed}") from None


def next_chunk_state(state: str, event: str) -> str:
    try:
        return CHUNK_TRANSITIONS[state][event]
    except KeyError:
        raise InvalidTransition(f"cannot {event} a chunk that is {state}") from None


def settle_event(chunks_total: int, chunks_done: int, chunks_failed: int) -> str | None:
    """The event that ends a running job once every chunk is settled."""
    if chunks_done + chunks_failed < chunks_total:
        return None
    return SETTLE_EVENTS["with_errors" if chunks_failed else "clean"]


def series_status(chunks_total: int, chunks_done: int, chunks_failed: int, chunks_leased: int,
                  job_status: str = "running") -> str:
    """One series of a job: pending until one of its chunks is claimed,
    then running until every chunk is settled; once the job has stopped
    (``STOPPED_JOB_STATES``), a started series that no chunk of its runs in
    takes the job's status."""
    if chunks_total and chunks_done + chunks_failed >= chunks_total:
        if not chunks_failed:
            return "completed"
        return "completed_with_errors" if chunks_done else "failed"
    if chunks_leased:
        return "running"
    if chunks_done or chunks_failed:
        return job_status if job_status in STOPPED_JOB_STATES else "running"
    return "pending"


# -- the driver's decisions ---------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """What the driver saw at the start of a turn."""
    now: float              # monotonic seconds
    status: str             # the job's status in Redis
    in_flight: int          # chunks submitted and not yet collected
    stop: bool = False      # a signal asked this process to stop
    wedged: tuple[int, ...] = ()  # timed-out chunks holding every worker slot


@dataclass(frozen=True)
class Claim:
    """Claim up to ``n`` chunks and submit them."""
    n: int


@dataclass(frozen=True)
class Collect:
    """Wait up to ``seconds`` for submitted chunks and take their results."""
    seconds: float


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Transition:
    """Move the job (interrupt, fail) with a note for its history."""
    event: str
    note: str


@dataclass(frozen=True)
class Abandon:
    """Hand every submitted chunk back to the queue and interrupt the job."""
    why: str


@dataclass(frozen=True)
class ReturnExpired:
    """Return leases that ran out (vanished workers) to the queue."""


@dataclass(frozen=True)
class Finish:
    """Stop driving: the job is ``status``."""
    status: str


Instruction = Claim | Collect | Wait | Transition | Abandon | ReturnExpired | Finish


@dataclass
class DriverMachine:
    """The driver loop's decisions; every input is an argument, so it is
    tested without Redis or Dask.

    ``workers`` chunks run at once; twice that many are kept submitted so a
    worker never waits for the driver.  ``shutdown_timeout`` is how long
    running chunks get after a stop before they are abandoned.
    """

    workers: int
    shutdown_timeout: float
    hold_until: float = 0.0           # no claims before this (a dependency is down)
    stop_deadline: float | None = None
    drained: bool = False             # the last claim found the queue empty
    _interrupted: bool = field(default=False, repr=False)

    def step(self, seen: Seen) -> list[Instruction]:
        """One turn of the loop."""
        out: list[Instruction] = []
        status = seen.status
        if seen.stop:
            if status == "running" and not self._interrupted:
                self._interrupted = True
                out.append(Transition("interrupt", "signal"))
                status = "interrupted"
            if status == "paused" and not seen.in_flight:
                return out + [Finish(status)]  # stays paused; nothing to wait for
            if self.stop_deadline is None:
                self.stop_deadline = seen.now + self.shutdown_timeout
        if seen.wedged:
            chunks = ", ".join(map(str, seen.wedged))
            return out + [Abandon(f"all {self.workers} worker slots are stuck (chunks {chunks}; "
                                  f"stacks in the job's events); resume in a new process")]
        may_claim = status == "running" and not seen.stop and seen.now >= self.hold_until
        room = 2 * self.workers - seen.in_flight
        if may_claim and room > 0:
            out.append(Claim(room))
        if seen.in_flight:
            out.append(Collect(0.5))
            if self.stop_deadline is not None and seen.now > self.stop_deadline:
                out.append(Abandon("shutdown timeout"))
            return out
        if status in FINAL_JOB_STATES or status == "interrupted":
            return out + [Finish(status)]
        if not may_claim:
            out.append(Wait(0.2))
        return out

    def claimed(self, got: int, empty: bool, in_flight: int) -> list[Instruction]:
        """After a claim: with nothing running and nothing left to claim, a
        chunk may still be held by a lease that ran out (a lost worker)."""
        self.drained = empty
        if empty and not in_flight:
            return [ReturnExpired()]
        return []

    def returned(self, n: int, status: str) -> list[Instruction]:
        """After expired leases were returned: ``n`` chunks came back."""
        if n:
            return []  # claim them on the next turn
        if status != "running":
            return [Finish(status)]  # the last chunk's completion settled the job
        return [Wait(0.2)]  # another process still holds a live lease

    def outcome(self, result, now: float) -> list[Instruction]:
        """A chunk's result (``result.ChunkResult``), already recorded by its
        worker: only what the driver itself must do about it."""
        out: list[Instruction] = []
        if result.retry_after:
            self.hold_until = max(self.hold_until, now + result.retry_after)
        if result.fail_job:
            out.append(Transition("fail", f"chunk {result.index}: {result.error}"[:500]))
        return out
