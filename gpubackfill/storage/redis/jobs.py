"""Jobs: the record, its status moves, its events and its lifetime.

    P:jobs               zset   job ids by creation time
    P:job:J              hash   spec, status, the job's counters, timestamps: as many
                                fields whatever its series
    P:job:J:series       hash   per series i of the job: i:chunks_total, :chunks_done,
                                :chunks_failed, :leased, :candles_total, :candles_done,
                                :errors (kept by the chunks' scripts; read a page at a time)
    P:job:J:events       list   history, newest last (capped)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ...errors import InvalidTransition, JobNotFound
from ...jobs.machine import FINAL_JOB_STATES, JOB_TRANSITIONS, TABLES
from ...jobs.result import Segment, encode_segments
from ...labels import counters
from .base import StateBase, now_ms
from .scripts import EVENTS_KEPT

# Every key of a job but its driver lock (its own expiry).
PARTS = ("", "series", "plan", "state", "failed", "pending", "lease", "attempts", "errors", "events", "durations",
         "samples", "records", "writes")

# Entries (chunks, or series' counters) written per command when a job is
# created.  A page of 2,000 took 1-2 ms, and up to 36 ms just after an AOF
# rewrite's fork (the server then copies each memory page it writes to).
PAGE = 500
SERIES_COUNTERS = ("chunks_total", "chunks_done", "chunks_failed", "leased", "candles_total",
                   "candles_done", "errors")
SERIES_READ = 1_000  # series whose counters one command reads

_INT_FIELDS = {"created", "updated", "started", "finished", "chunks_total", "chunks_done",
               "chunks_failed", "chunks_leased", "candles_total", "candles_done", "rows_written", "cache_hits",
               "errors", "lease_seq", "chunk_size", "workers", "start_ms", "end_ms",
               "candles_skipped"}
_JSON_FIELDS = ("labels", "params", "spec", "series", "skipped", "instruments", "granularities")


class Jobs(StateBase):
    def create_job(self, job_id: str, fields: dict[str, Any],
                   chunks: Sequence[tuple[Segment, ...] | tuple[int, int, int]]) -> None:
        """Store a planned job, queued.  ``chunks``: each chunk's segments, in
        the order they are to be claimed (a bare (start, end, rows) is one
        segment of series 0)."""
        t = now_ms()
        plans = [(Segment(0, *c),) if isinstance(c[0], int) else tuple(c) for c in chunks]
        base: dict[str, Any] = {
            "status": "queued", "created": t, "updated": t, "chunks_total": len(plans),
            "chunks_done": 0, "chunks_failed": 0, "chunks_leased": 0,
            "candles_total": sum(s.rows for p in plans for s in p),
            "candles_done": 0, "candles_skipped": 0, "rows_written": 0, "cache_hits": 0, "errors": 0,
            # every label's counters, so a job's record has the same fields whatever its labels
            **{c.field: 0 for c in counters()}}
        per_series: dict[str, int] = {}
        for p in plans:
            for seg in p:
                n_chunks, n_candles = f"{seg.series}:chunks_total", f"{seg.series}:candles_total"
                per_series[n_chunks] = per_series.get(n_chunks, 0) + 1
                per_series[n_candles] = per_series.get(n_candles, 0) + seg.rows
        base.update(fields)
        # The chunks and the series' counters first, a page a command: one
        # command of a million entries held Redis for seconds (and broke
        # the connection at 1M chunks).  Nothing reads them before the
        # job's hash exists.
        items = list(per_series.items())
        for at in range(0, len(items), PAGE):
            self.call(self.client.hset, self.key(job_id, "series"), mapping=dict(items[at:at + PAGE]))
        for at in range(0, len(plans), PAGE):
            page = range(at, min(at + PAGE, len(plans)))
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self.key(job_id, "plan"), mapping={i: encode_segments(plans[i]) for i in page})
            pipe.hset(self.key(job_id, "state"), mapping=dict.fromkeys(page, "pending"))
            pipe.rpush(self.key(job_id, "pending"), *page)
            self.call(pipe.execute)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(job_id), mapping={k: _enc(v) for k, v in base.items()})
        pipe.rpush(self.key(job_id, "events"),
                   json.dumps({"t": t, "event": "create", "from": "", "to": "queued", "note": ""}))
        pipe.zadd(self.shared_key("jobs"), {job_id: t})
        if fields.get("spec_key"):
            pipe.persist(fields["spec_key"])
        self.call(pipe.execute)

    def job(self, job_id: str) -> dict[str, Any]:
        h = self.call(self.client.hgetall, self.key(job_id))
        if not h:
            raise JobNotFound(f"no job {job_id!r}")
        return decode_fields(h)

    def series_counters(self, job_id: str, first: int, n: int) -> list[dict[str, int]]:
        """The counters of series ``first`` .. ``first + n - 1`` of the job
        (``SERIES_COUNTERS``, 0 where none was counted yet), a bounded page
        a command: a job of 100k series has 700k of them."""
        out: list[dict[str, int]] = []
        for at in range(first, first + n, SERIES_READ):
            ids = range(at, min(at + SERIES_READ, first + n))
            values = self.call(self.client.hmget, self.key(job_id, "series"),
                               [f"{i}:{c}" for i in ids for c in SERIES_COUNTERS])
            k = len(SERIES_COUNTERS)
            out += [{c: int(v or 0) for c, v in zip(SERIES_COUNTERS, values[j * k:(j + 1) * k])}
                    for j in range(len(ids))]
        return out

    def status(self, job_id: str) -> str:
        """The job's status alone (the whole record carries its series list)."""
        status = self.call(self.client.hget, self.key(job_id), "status")
        if status is None:
            raise JobNotFound(f"no job {job_id!r}")
        return status

    def job_ids(self) -> list[str]:
        return list(self.call(self.client.zrange, self.shared_key("jobs"), 0, -1))

    def set_fields(self, job_id: str, **fields) -> None:
        self.call(self.client.hset, self.key(job_id), mapping={k: _enc(v) for k, v in fields.items()})

    def transition(self, job_id: str, event: str, note: str = "") -> str:
        status, value = self.run("transition", [self.key(job_id), self.key(job_id, "events")],
                                 [event, now_ms(), note, TABLES])
        check_step(job_id, event, status, value)
        if value in FINAL_JOB_STATES:
            self.expire_job(job_id)
        return value

    def settle(self, job_id: str) -> str:
        """End a running job whose chunks are all settled (the same rule the
        last chunk's completion applies); the status either way."""
        return str(self.run("settle", [self.key(job_id), self.key(job_id, "events")], [now_ms(), TABLES]))

    def expire_job(self, job_id: str) -> None:
        pipe = self.client.pipeline()
        for part in PARTS:
            pipe.expire(self.key(job_id, part), self.ttl)
        self.call(pipe.execute)

    def events(self, job_id: str, last: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.call(self.client.lrange, self.key(job_id, "events"), -last, -1)]

    def note(self, job_id: str, event: str, note: str) -> None:
        pipe = self.client.pipeline()
        pipe.rpush(self.key(job_id, "events"),
                   json.dumps({"t": now_ms(), "event": event, "from": "", "to": "", "note": note}))
        pipe.ltrim(self.key(job_id, "events"), -EVENTS_KEPT, -1)
        self.call(pipe.execute)


def check_step(job_id: str, event: str, status: str, value: str) -> None:
    """Raise for a status move the job script refused ('missing', 'refused')."""
    if status == "missing":
        raise JobNotFound(f"no job {job_id!r}")
    if status == "refused":
        allowed = ", ".join(JOB_TRANSITIONS[value]) or "nothing (it is final)"
        raise InvalidTransition(f"cannot {event} job {job_id}: it is {value} (allowed: {allowed})")


def decode_fields(h: dict[str, str]) -> dict[str, Any]:
    """A job hash's fields, typed (``JobSpec.from_record`` reads its spec)."""
    ints = _INT_FIELDS | {c.field for c in counters()}
    return {k: _dec(k, v, ints) for k, v in h.items()}


def _enc(v: Any) -> str:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _dec(key: str, v: str, ints: set[str]) -> Any:
    if key.startswith("stage:"):
        return float(v)
    if key in ints:
        try:
            return int(v)
        except ValueError:
            return v
    if key in _JSON_FIELDS:
        return json.loads(v)
    if key == "force":
        return v == "1"
    return v
