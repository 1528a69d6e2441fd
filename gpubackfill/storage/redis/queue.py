"""The chunk queue: plan entries, claims, results, failures, and chunks
split or put back.

    P:job:J:plan         hash   chunk index -> its segments "series,start_ms,end_ms,rows;..."
    P:job:J:state        hash   chunk index -> pending|leased|done|failed
    P:job:J:pending      list   chunk indices waiting to be claimed
    P:job:J:failed       set    the chunks given up on (state failed)
    P:job:J:attempts     hash   chunk index -> attempts so far
    P:job:J:errors       hash   chunk index -> last error
    P:job:J:records      list   manifest rows recorded by chunks, not yet inserted

A chunk's completion records its whole ``ChunkResult`` in the same script
(its job's and series' counters, the deployment's totals, the ETA sample).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import JobNotFound
from ...jobs.machine import TABLES
from ...jobs.result import ChunkResult, Segment, encode_segments
from .base import StateBase, now_ms
from .jobs import PAGE
from .stats import bucket_field


class Queue(StateBase):
    def plan(self, job_id: str) -> dict[int, tuple[Segment, ...]]:
        raw = self.call(self.client.hgetall, self.key(job_id, "plan"))
        return {int(i): Segment.decode_all(v) for i, v in raw.items()}

    def plan_entry(self, job_id: str, idx: int) -> tuple[Segment, ...]:
        raw = self.call(self.client.hget, self.key(job_id, "plan"), idx)
        if raw is None:
            raise JobNotFound(f"job {job_id} has no chunk {idx}")
        return Segment.decode_all(raw)

    def set_plan_entries(self, job_id: str, entries: dict[int, tuple[Segment, ...]],
                         page: int = PAGE) -> None:
        """Replace chunks' plan entries, a page a command (a job's start
        marks up to every chunk fresh: a million in one HSET held Redis for seconds)."""
        items = list(entries.items())
        for at in range(0, len(items), page):
            self.call(self.client.hset, self.key(job_id, "plan"),
                      mapping={i: encode_segments(segs) for i, segs in items[at:at + page]})

    def chunk_states(self, job_id: str) -> dict[int, str]:
        return {int(i): s for i, s in self.call(self.client.hgetall, self.key(job_id, "state")).items()}

    def chunk_errors(self, job_id: str) -> dict[int, str]:
        return {int(i): s for i, s in self.call(self.client.hgetall, self.key(job_id, "errors")).items()}

    def chunk_error_heads(self, job_id: str, n: int = 5) -> dict[int, str]:
        """First line of up to ``n`` chunks' last errors (HSCAN, not the whole hash)."""
        out: dict[int, str] = {}
        for i, v in self.call(self.client.hscan_iter, self.key(job_id, "errors"), count=n):
            out[int(i)] = v.splitlines()[0] if v else ""
            if len(out) >= n:
                break
        return out

    def claim(self, job_id: str, owner: str, lease_ms: int
              ) -> tuple[int, int, tuple[Segment, ...]] | str:
        """(chunk index, lease token, its segments), or why not: 'empty' or
        the job status.  The segments are read in the same step because a
        split may have changed them."""
        return self._claimed(self.run("claim", *self._claim_call(job_id, owner, lease_ms)))

    def claim_many(self, job_id: str, owner: str, lease_ms: int, n: int
                   ) -> list[tuple[int, int, tuple[Segment, ...]] | str]:
        """``claim`` ``n`` times in one round trip; once one answers why
        not, so do the rest."""
        call = self._claim_call(job_id, owner, lease_ms)
        return [self._claimed(out) for out in self.run_many("claim", [call] * n)]

    def _claim_call(self, job_id: str, owner: str, lease_ms: int) -> tuple[list[str], list[Any]]:
        key = self.key
        return ([key(job_id), key(job_id, "pending"), key(job_id, "state"), key(job_id, "lease"),
                 key(job_id, "plan")], [owner, now_ms(), lease_ms, TABLES])

    @staticmethod
    def _claimed(out: list) -> tuple[int, int, tuple[Segment, ...]] | str:
        if out[0] == -2:
            return "empty"
        if out[0] == -1:
            return out[1]
        return int(out[0]), int(out[1]), Segment.decode_all(out[2])

    def complete(self, job_id: str, idx: int, token: int, result: ChunkResult,
                 instruments: Mapping[int, str] | None = None) -> tuple[str, str]:
        """Record a chunk's result and settle it, atomically (its job's and
        series' counters, the deployment's totals, the ETA sample).
        ``instruments``: each segment's series index -> its instrument
        (without it the script looks them up in the job's series list, a
        read as long as the job has series).
        ('stale', '') when the lease is no longer ours."""
        return tuple(self.run("complete", *self._complete_call(job_id, idx, token, result, instruments)))

    def complete_many(self, job_id: str,
                      chunks: Sequence[tuple[int, int, ChunkResult, Mapping[int, str] | None]]
                      ) -> list[tuple[str, str]]:
        """``complete`` for each (index, token, result, instruments), in one
        round trip; each chunk is settled atomically on its own."""
        return [tuple(out) for out in self.run_many("complete", [self._complete_call(job_id, *c)
                                                                 for c in chunks])]

    def _complete_call(self, job_id: str, idx: int, token: int, result: ChunkResult,
                       instruments: Mapping[int, str] | None) -> tuple[list[str], list[Any]]:
        key = self.key
        return ([key(job_id), key(job_id, "state"), key(job_id, "lease"),
                 key(job_id, "events"), key(job_id, "durations"), key(job_id, "plan"),
                 self.shared_key("stats"), key(job_id, "samples"), key(job_id, "records")],
                [idx, token, now_ms(), f"{result.duration:.6f}",
                 bucket_field(result.duration), _result_json(result, instruments),
                 self.ttl, TABLES])

    def records(self, job_id: str, limit: int = 10_000) -> list[tuple]:
        """The oldest manifest rows that chunks of the job recorded and no one
        has inserted into ClickHouse yet (``ChunkResult.records``)."""
        return [tuple(json.loads(r)) for r in self.call(self.client.lrange, self.key(job_id, "records"),
                                                         0, limit - 1)]

    def drop_records(self, job_id: str, n: int) -> None:
        """Forget the oldest ``n`` manifest rows (inserted)."""
        self.call(self.client.ltrim, self.key(job_id, "records"), n, -1)

    def fail(self, job_id: str, idx: int, token: int, error: str, max_attempts: int,
             retryable: bool = True, category: str = "transient",
             detail: dict[str, Any] | None = None) -> tuple[str, str]:
        """Record a failed attempt: back to pending while attempts remain and
        ``retryable``, else the chunk is failed and dead-lettered."""
        key = self.key
        segs = self.plan_entry(job_id, idx)
        entry = {"id": f"{job_id}:{idx}", "job_id": job_id, "chunk": idx,
                 "start_ms": min(s.start_ms for s in segs), "end_ms": max(s.end_ms for s in segs),
                 "category": category, "message": error.splitlines()[0][:500] if error else "",
                 "time_ms": now_ms(), **(detail or {})}
        if len(segs) > 1 or segs[0].series:
            entry["series"] = sorted({s.series for s in segs})
        return tuple(self.run("fail",
                              [key(job_id), key(job_id, "state"), key(job_id, "lease"),
                               key(job_id, "pending"), key(job_id, "attempts"),
                               key(job_id, "errors"), key(job_id, "events"),
                               self.shared_key("dlq"), self.shared_key("counters"), key(job_id, "plan"),
                               self.shared_key("stats")],
                              [idx, token, max_attempts, error[:2000], now_ms(),
                               "1" if retryable else "0", category, json.dumps(entry), TABLES]))

    def split(self, job_id: str, idx: int, token: int, mid_ms: int, left: int, right: int) -> int | None:
        """Cut a leased one-segment chunk at ``mid_ms`` into two pending chunks; the new index."""
        new = int(self.run("split", self._cut_keys(job_id), [idx, token, mid_ms, left, right, TABLES]))
        return None if new < 0 else new

    def unpack(self, job_id: str, idx: int, token: int) -> int:
        """Break a leased pack into one chunk per segment, all pending; the
        number of chunks added (0: not ours, or not a pack)."""
        return max(int(self.run("unpack", self._cut_keys(job_id), [idx, token, TABLES])), 0)

    def _cut_keys(self, job_id: str) -> list[str]:
        key = self.key
        return [key(job_id), key(job_id, "plan"), key(job_id, "state"), key(job_id, "lease"),
                key(job_id, "pending")]

    def requeue_failed(self, job_id: str) -> int:
        """Put given-up chunks back in the queue (a re-run after a fix)."""
        failed = [int(i) for i in self.call(self.client.smembers, self.key(job_id, "failed"))]
        if not failed and int(self.call(self.client.hget, self.key(job_id), "chunks_failed") or 0):
            # failed before the set was kept
            failed = [i for i, s in self.chunk_states(job_id).items() if s == "failed"]
        return sum(self.requeue(job_id, i) for i in failed)

    def requeue(self, job_id: str, idx: int) -> bool:
        """A failed chunk back to pending, its dead-letter entry removed."""
        key = self.key
        return bool(self.run("requeue", [key(job_id), key(job_id, "state"), key(job_id, "pending"),
                                         key(job_id, "attempts"), self.shared_key("dlq"), key(job_id, "plan")],
                             [idx, f"{job_id}:{idx}", TABLES]))


def _result_json(result: ChunkResult, instruments: Mapping[int, str] | None = None) -> str:
    """A chunk's result as the completion script reads it."""
    return json.dumps({
        "segments": [[s.series, s.candles, s.rows, s.planned if s.planned else -1]
                     + ([instruments[s.series]] if instruments and s.series in instruments else [])
                     for s in result.segments],
        "cache_hit": int(result.cache_hit),
        "skipped": sum(s.candles for s in result.segments if s.cached),
        "counters": result.counters,
        # an empty Lua table would encode as a list: always one key
        "stages": {"total": round(result.duration, 6),
                   **{k: round(v, 6) for k, v in result.stages.items()}},
        # strings, passed through as they are (Lua numbers are doubles)
        "records": [json.dumps(r) for r in result.records],
        # seconds as text: a double through cjson would print as 1.2e-05
        "sample": ([f"{result.duration:.6f}", result.candles] if result.sample is None
                   else [f"{result.sample[0]:.6f}", result.sample[1]])})
