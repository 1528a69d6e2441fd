"""Observability records in Redis, shared by every process.

A process that drives a job writes here as its chunks finish; any process
(``gpubackfill metrics``, the service's ``/metrics``) reads the totals back.
The counters therefore belong to the deployment, not to one process.

Keys (prefix P, job id J)::

    P:stats              hash   monotonic totals (written with each chunk's result)
    P:job:J:samples      list   "finished_ms,duration_s,candles" per chunk, or per task of
                                chunks sharing one read and insert (for the ETA)
    P:alerts             hash   condition -> JSON of the firing alert (absent: clear)
    P:alert_history      list   JSON of every alert fired or cleared, newest last

Written by the reliability layer (read here, defensively: a missing key
means zero, or every breaker closed)::

    P:breakers           hash   dependency -> {"state", "failures", "changed_ms"}
    P:dlq                hash   one field per dead-lettered chunk
    P:counters           hash   retries:<category>, errors:<category>
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CATEGORIES
from .redis import CHUNK_BUCKETS, RedisState, now_ms  # noqa: F401 - CHUNK_BUCKETS for metrics
from .resilience import BREAKER_STATES

HISTORY_KEPT = 200


class Telemetry:
    """Counters, samples, alerts and reliability data over one RedisState."""

    def __init__(self, state: RedisState):
        self.state = state
        self.client = state.client
        self.prefix = state.prefix

    def _call(self, fn, *args, **kwargs):
        return self.state.call(fn, *args, **kwargs)

    # -- chunks (recorded by RedisState.complete / fail) ---------------------

    def stats(self) -> dict[str, float]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:stats")
        return {k: float(v) for k, v in raw.items()}

    def samples(self, job_id: str) -> list[tuple[int, float, int]]:
        out = []
        for item in self._call(self.client.lrange, self.state.key(job_id, "samples"), 0, -1):
            try:
                t, d, n = item.split(",")
                out.append((int(t), float(d), int(n)))
            except ValueError:
                continue
        return out

    def forget_job(self, job_id: str) -> None:
        self._call(self.client.delete, self.state.key(job_id, "samples"))

    # -- reliability data (written by others) --------------------------------

    def breakers(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, raw in self._call(self.client.hgetall, f"{self.prefix}:breakers").items():
            try:
                value = json.loads(raw)
                state = str(value.get("state", "closed"))
            except (ValueError, AttributeError):
                value, state = {}, "closed"
            out[name] = {"state": state if state in BREAKER_STATES else "closed",
                         "failures": _int(value.get("failures") if isinstance(value, dict) else 0)}
        return out

    def dead_letters(self) -> int:
        return int(self._call(self.client.hlen, f"{self.prefix}:dlq"))

    def counters(self) -> dict[str, dict[str, int]]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:counters")
        out = {"retries": {c: 0 for c in CATEGORIES}, "errors": {c: 0 for c in CATEGORIES}}
        for field, value in raw.items():
            kind, _, category = field.partition(":")
            if kind in out and category:
                out[kind][category] = _int(value)
        return out

    # -- alerts --------------------------------------------------------------

    def fire_alert(self, name: str, record: dict[str, Any]) -> bool:
        """Mark ``name`` firing; True only for the one caller that changed it."""
        if not self._call(self.client.hsetnx, f"{self.prefix}:alerts", name, json.dumps(record)):
            return False
        self._history({**record, "event": "firing"})
        return True

    def clear_alert(self, name: str) -> bool:
        raw = self._call(self.client.hget, f"{self.prefix}:alerts", name)
        if raw is None or not self._call(self.client.hdel, f"{self.prefix}:alerts", name):
            return False
        self._history({**json.loads(raw), "event": "resolved", "resolved_ms": now_ms()})
        return True

    def alerts(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self._call(self.client.hgetall, f"{self.prefix}:alerts").items()}

    def alert_history(self, last: int = 20) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self._call(self.client.lrange, f"{self.prefix}:alert_history", -last, -1)]

    def _history(self, record: dict[str, Any]) -> None:
        pipe = self.client.pipeline()
        pipe.rpush(f"{self.prefix}:alert_history", json.dumps(record))
        pipe.ltrim(f"{self.prefix}:alert_history", -HISTORY_KEPT, -1)
        self._call(pipe.execute)


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0
