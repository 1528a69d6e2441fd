"""The job and chunk lifecycles as pure data and functions.

Redis applies these transitions atomically (its Lua scripts receive the
tables below as JSON), so this module is the single definition of what may
happen to a job or a chunk.

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
               "expire": "pending", "give_up": "failed"},
    "done": {},
    "failed": {"requeue": "pending"},
}

JOB_STATES = tuple(JOB_TRANSITIONS)
CHUNK_STATES = tuple(CHUNK_TRANSITIONS)


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


def finished_status(chunks_total: int, chunks_done: int, chunks_failed: int) -> str | None:
    """The event that ends a running job once every chunk is settled."""
    if chunks_done + chunks_failed < chunks_total:
        return None
    return "complete_with_errors" if chunks_failed else "complete"
