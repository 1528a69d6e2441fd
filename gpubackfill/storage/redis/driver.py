"""The driver lock: the one process that drives a job.

    P:job:J:driver       string the process driving the job (expires)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ...errors import JobNotFound
from ...jobs.machine import TABLES
from ...jobs.result import Segment
from .base import now_ms
from .jobs import decode_fields
from .writers import Writers


@dataclass(frozen=True)
class Begun:
    """What ``begin_run`` did.  ``outcome``: 'ok'; or, with nothing changed,
    'driver' (``other``: the lock's holder, its ms left), 'refused' (the job's
    status cannot run), 'writer' (``other``: the job writing an overlapping
    range, its status, its series)."""
    outcome: str
    before: str = ""                     # the job's status before
    status: str = ""                     # and after (a run whose chunks were all settled has ended)
    job: dict[str, Any] = field(default_factory=dict)
    pending: dict[int, tuple[Segment, ...]] = field(default_factory=dict)  # pending chunks' plan entries
    other: tuple[str, ...] = ()


class Driver(Writers):
    def acquire_driver(self, job_id: str, owner: str, ttl_ms: int) -> str | None:
        """Become the job's driver unless a live one exists; returns the other owner if refused."""
        key = self.key(job_id, "driver")
        if self.call(self.client.set, key, owner, nx=True, px=ttl_ms):
            return None
        current = self.call(self.client.get, key)
        if current == owner:
            self.call(self.client.pexpire, key, ttl_ms)
            return None
        return current

    def renew_driver(self, job_id: str, owner: str, ttl_ms: int) -> bool:
        key = self.key(job_id, "driver")
        if self.call(self.client.get, key) == owner:
            return bool(self.call(self.client.pexpire, key, ttl_ms))
        return False

    def driver_owner(self, job_id: str) -> str | None:
        """The process holding the job's driver lock (None: no lock, or it expired)."""
        return self.call(self.client.get, self.key(job_id, "driver"))

    def driver_ttl_ms(self, job_id: str) -> int:
        """Milliseconds before the driver lock expires unless renewed (< 0: no lock)."""
        return int(self.call(self.client.pttl, self.key(job_id, "driver")))

    def release_driver(self, job_id: str, owner: str) -> None:
        key = self.key(job_id, "driver")
        if self.call(self.client.get, key) == owner:
            self.call(self.client.delete, key)

    def take_over_driver(self, job_id: str, dead: str, owner: str, ttl_ms: int) -> bool:
        return bool(self.run("take_over_driver", [self.key(job_id, "driver")], [dead, owner, ttl_ms]))

    def begin_run(self, job_id: str, owner: str, ttl_ms: int) -> Begun:
        """The start of a run in one step (``lua/begin.lua``): the driver lock,
        the job running with its writes claimed (failed chunks queued again),
        expired leases back, and the job ended if nothing is left to run."""
        key = self.key
        keys = [key(job_id), key(job_id, "events"), key(job_id, "driver"), key(job_id, "state"),
                key(job_id, "lease"), key(job_id, "pending"), key(job_id, "plan"), key(job_id, "attempts"),
                self.shared_key("dlq")]
        replies: list[Any] = []

        def attempt(cleared: list[str]) -> tuple[str, ...]:
            # A job writing the label set over an overlapping range stops the
            # start until its series are found apart from this job's.
            replies.append(out := self.run("begin", keys, [
                job_id, key(""), self.shared_key("writing:"), owner, ttl_ms, now_ms(),
                json.dumps(cleared), TABLES]))
            return (out[1], out[2]) if out[0] == "writer" else ("", "")

        conflict = self.settle_writers(job_id, None, attempt)
        out = replies[-1]
        kind = out[0]
        if kind == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if kind == "driver":
            return Begun(kind, other=(out[1], out[2]))
        if kind == "refused":
            return Begun(kind, before=out[1])
        if kind == "writer":
            assert conflict is not None
            return Begun(kind, before=out[4], other=conflict)
        pending = self.pending_plans(job_id) if out[2] == "running" else {}
        record = decode_fields(self.call(self.client.hgetall, self.key(job_id)))
        return Begun(kind, out[1], out[2], record, pending)

    def pending_plans(self, job_id: str, page: int = 1_000) -> dict[int, tuple[Segment, ...]]:
        """The plan entries of the job's pending chunks, read a page at a
        time (HSCAN of the states, HMGET of their entries): no call holds
        Redis for longer than a page takes, whatever the size of the job.
        A chunk that changes state meanwhile is the driver's own to claim,
        as after any start."""
        out: dict[int, tuple[Segment, ...]] = {}
        batch: list[str] = []

        def flush() -> None:
            plans = self.call(self.client.hmget, self.key(job_id, "plan"), batch)
            out.update({int(i): Segment.decode_all(p) for i, p in zip(batch, plans) if p is not None})
            batch.clear()

        for idx, st in self.call(self.client.hscan_iter, self.key(job_id, "state"), count=page):
            if st == "pending":
                batch.append(idx)
                if len(batch) >= page:
                    flush()
        if batch:
            flush()
        return out
