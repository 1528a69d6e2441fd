"""Job and chunk state in Redis, every transition one atomic Lua script.

One module per concept, each a part of ``RedisState`` and naming its own
keys (prefix P, job id J): ``jobs`` (the record, status moves, events),
``driver`` (the lock of the process driving a job), ``queue`` (plan
entries, claims, results, failures, splits, requeues), ``leases`` (leases
and the write fence), ``writers`` (one active job per spec, who writes
which ranges of a label set), ``dlq`` (the dead-letter queue) and
``stats`` (counters, breakers, ETA durations and samples).  ``base`` holds
the client, key names and the call through the breaker; ``scripts`` loads
the Lua in ``lua/``, where the pieces several scripts share (lease
parsing, the state machine, the writers claim) are written once.

The scripts take the transition tables of ``jobs.machine`` as JSON, so
Redis and the Python state machine cannot disagree.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidInput
from ...jobs.machine import FINAL_JOB_STATES
from .base import now_ms
from .dlq import DeadLetters
from .driver import Driver
from .jobs import PARTS, Jobs
from .leases import Leases
from .queue import Queue
from .stats import CHUNK_BUCKETS, Stats, bucket_field
from .writers import Writers

__all__ = ["CHUNK_BUCKETS", "RedisState", "bucket_field", "now_ms"]


class RedisState(Jobs, Driver, Queue, Leases, Writers, DeadLetters, Stats):
    """The job/chunk store: one client, every part of the state."""

    def finished_before(self, cutoff_ms: float, status: str | None) -> list[tuple[str, bool]]:
        """The jobs to clean up: finished (in ``status``, if given) before
        the cutoff, as (id, True); those whose record is gone, as (id, False)
        (the rest of them goes too)."""
        out = []
        for job_id in self.job_ids():
            try:
                job = self.job(job_id)
            except InvalidInput:
                out.append((job_id, False))
                continue
            if (job["status"] in FINAL_JOB_STATES and status in (None, job["status"])
                    and (job.get("finished") or job["updated"]) <= cutoff_ms):
                out.append((job_id, True))
        return out

    def dead_letters_of(self, ids: list[str] | None, job_id: str | None) -> list[dict[str, Any]]:
        """The entries named, else those of ``job_id`` (an unknown job is an
        error, not an empty list), else all."""
        if ids:
            return [self.dead_letter(i) for i in ids]
        if job_id is not None:
            self.job(job_id)
        return self.dead_letters(job_id)

    def dead_letter_detail(self, entry_id: str) -> dict[str, Any]:
        """An entry with its chunk's last error."""
        entry = self.dead_letter(entry_id)
        try:
            entry["error"] = self.chunk_errors(entry["job_id"]).get(entry["chunk"], "")
        except InvalidInput:
            entry["error"] = ""
        return entry

    def retry_dead_letters(self, ids: list[str] | None, job_id: str | None) -> dict[str, int]:
        """The entries' chunks back in their queues; chunks re-queued per job."""
        out: dict[str, int] = {}
        for e in self.dead_letters_of(ids, job_id):
            if self.requeue(e["job_id"], e["chunk"]):
                out[e["job_id"]] = out.get(e["job_id"], 0) + 1
        return out

    def delete_job(self, job_id: str) -> None:
        """Every key of the job, its dead letters, and its spec claim if it holds it."""
        dead = [e["id"] for e in self.dead_letters(job_id)]
        spec = self.call(self.client.hget, self.key(job_id), "spec_key")
        pipe = self.client.pipeline()
        if spec and self.call(self.client.get, spec) == job_id:
            pipe.delete(spec)
        if dead:
            pipe.hdel(self.shared_key("dlq"), *dead)
        for part in PARTS + ("driver",):
            pipe.delete(self.key(job_id, part))
        pipe.zrem(self.shared_key("jobs"), job_id)
        self.call(pipe.execute)
