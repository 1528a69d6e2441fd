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
