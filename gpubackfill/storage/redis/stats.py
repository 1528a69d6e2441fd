"""What the deployment counts: totals, failure counters, breaker states,
and the chunk durations and samples the ETA reads.

    P:job:J:durations    list   recent chunk durations (s) for the ETA
    P:job:J:samples      list   "finished_ms,duration_s,candles" per chunk, or per task of
                                chunks sharing one read and insert (for the ETA)
    P:counters           hash   retries:<category>, errors:<category> -> count
    P:breakers           hash   dependency -> last published breaker state (JSON)
    P:stats              hash   monotonic totals: chunks, candles, rows, cache hits,
                                failures, labels:<name>, instrument:<name>,
                                chunk_seconds histogram (bucket:<le>, sum, count)

Chunks write them in their completion and failure scripts (``Queue``);
``Telemetry`` reads the totals, samples and breakers back.
"""

from __future__ import annotations

import json
from typing import Any

from .base import StateBase

# Chunk duration buckets (seconds): from cache hits (ms) to very large chunks.
CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def bucket_field(seconds: float) -> str:
    for b in CHUNK_BUCKETS:
        if seconds <= b:
            return f"bucket:{b:g}"
    return "bucket:+Inf"


class Stats(StateBase):
    def count(self, field: str, n: int = 1) -> None:
        self.call(self.client.hincrby, self.shared_key("counters"), field, n)

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.call(self.client.hgetall, self.shared_key("counters")).items()}

    def publish_breaker(self, name: str, state: dict[str, Any]) -> None:
        # Straight to Redis, not through the breakers: this reports on them.
        self.client.hset(self.shared_key("breakers"), name, json.dumps(state))

    def durations(self, job_id: str) -> list[tuple[float, int]]:
        out = []
        for item in self.call(self.client.lrange, self.key(job_id, "durations"), 0, -1):
            d, _, n = item.partition(":")
            out.append((float(d), int(n)))
        return out
