"""Who writes where: one active job per spec, and per label set the
series ranges each running job writes.

    P:spec:D             string the active job of spec digest D
    P:writing:S          hash   per job writing label set S: "start_ms,end_ms" (the
                                range of every series of the job)

Two jobs conflict when they write the same label set over overlapping
ranges and share a series.  Redis compares the ranges (one entry a job);
the series lists, which never change once a job is created, are compared
here, so that no call reads as many fields as a job has series.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ...jobs.machine import ACTIVE_JOB_STATES
from .base import StateBase

# (instrument, granularity, start_ms, end_ms) a job writes
Ranges = list[tuple[str, str, int, int]]


class Writers(StateBase):
    def spec_key(self, digest: str) -> str:
        return self.shared_key(f"spec:{digest}")

    def claim_spec(self, digest: str, job_id: str) -> tuple[str, str] | None:
        """Register ``job_id`` as the one active job of a spec; or the active
        (job id, status) that already has it."""
        other, status = self.run("claim_spec", [self.spec_key(digest)],
                                 [job_id, self._job_prefix(), json.dumps(sorted(ACTIVE_JOB_STATES))])
        return (other, status) if other else None

    def claim_writer(self, set_id: str, job_id: str, ranges: Ranges,
                     check: bool = False) -> tuple[str, str, str] | None:
        """Register ``job_id`` as a writer of its series' ranges of a label
        set, unless a job that is running (or still has chunks leased)
        writes an overlapping range of one of them: then (that job, its
        status, "instrument granularity").  While a job holds its ranges no
        other job writes there, so a range without label rows stays so
        until it is written (``Segment.fresh``).  ``check``: only look.
        ``ranges``: one range for every series of the job."""
        if not ranges:
            return None
        a, b = min(r[2] for r in ranges), max(r[3] for r in ranges)
        mine = [f"{i} {g}" for i, g, _, _ in ranges]
        return self.settle_writers(
            job_id, mine,
            lambda cleared: tuple(self.run(
                "claim_writer", [self._writers_key(set_id)],
                [job_id, self._job_prefix(), a, b, json.dumps(cleared), "check" if check else ""])))

    def settle_writers(self, job_id: str, mine: list[str] | None,
                       attempt: Callable[[list[str]], tuple[str, ...]]) -> tuple[str, str, str] | None:
        """Run ``attempt`` (a claim script: (other job, its status), or ('',
        ...) when it claimed) until it claims, clearing each job it names
        that shares no series with ``job_id`` (``mine``: its series, read
        from its record if None); or (job, status, the first series they
        share)."""
        cleared: list[str] = []
        while True:
            other, status = attempt(cleared)[:2]
            if not other:
                return None
            if mine is None:
                mine = self.series_keys(job_id)
            theirs = set(self.series_keys(other))
            shared = next((s for s in mine if s in theirs), None)
            if shared is not None:
                return other, status, shared
            cleared.append(other)

    def series_keys(self, job_id: str) -> list[str]:
        """A job's series as "instrument granularity" (none once its record is gone)."""
        names, inst, gran = self.call(self.client.hmget, self.key(job_id),
                                      ["series", "instrument", "granularity"])
        pairs = json.loads(names) if names else ([[inst, gran]] if inst is not None else [])
        return [f"{i} {g}" for i, g in pairs]

    def _job_prefix(self) -> str:
        """What the scripts put before another job's id to read its status."""
        return self.key("")

    def _writers_key(self, set_id: str) -> str:
        return self.shared_key(f"writing:{set_id}")
