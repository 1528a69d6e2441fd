"""The pure job/chunk lifecycle."""

import pytest

from gpubackfill.errors import InvalidTransition
from gpubackfill.state.machine import (CHUNK_TRANSITIONS, FINAL_JOB_STATES, JOB_TRANSITIONS,
                                       finished_status, next_chunk_state, next_job_status)


def test_happy_path_and_pause_resume():
    s = next_job_status("queued", "execute")
    assert s == "running"
    s = next_job_status(s, "pause")
    assert s == "paused" and next_job_status(s, "resume") == "running"
    assert next_job_status("running", "complete") == "completed"


@pytest.mark.parametrize("final", sorted(FINAL_JOB_STATES - {"failed", "completed_with_errors"}))
def test_completed_and_cancelled_jobs_accept_nothing(final):
    for event in ("execute", "pause", "resume", "cancel", "complete"):
        with pytest.raises(InvalidTransition, match=f"cannot {event} a job that is {final}"):
            next_job_status(final, event)


def test_failed_and_interrupted_jobs_can_be_executed_again():
    assert next_job_status("failed", "execute") == "running"
    assert next_job_status("interrupted", "execute") == "running"
    assert next_job_status("completed_with_errors", "execute") == "running"


def test_resume_needs_a_paused_job():
    with pytest.raises(InvalidTransition, match="allowed: pause, cancel, complete"):
        next_job_status("running", "resume")


def test_every_target_state_is_a_known_state():
    for table in (JOB_TRANSITIONS, CHUNK_TRANSITIONS):
        for src, events in table.items():
            for dst in events.values():
                assert dst in table, (src, dst)


def test_chunk_lifecycle():
    s = next_chunk_state("pending", "claim")
    assert s == "leased"
    assert next_chunk_state(s, "complete") == "done"
    assert next_chunk_state(s, "expire") == "pending"
    with pytest.raises(InvalidTransition):
        next_chunk_state("done", "claim")


def test_finished_status():
    assert finished_status(3, 2, 0) is None
    assert finished_status(3, 3, 0) == "complete"
    assert finished_status(3, 2, 1) == "complete_with_errors"
