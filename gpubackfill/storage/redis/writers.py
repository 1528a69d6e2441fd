"""Who writes where: one active job per spec, and per label set the
series ranges each running job writes.

    P:spec:D             string the active job of spec digest D
    P:writers:S          hash   per series of label set S: "job,start,end;..."
"""

from __future__ import annotations

import json

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
        """Register ``job_id`` as the writer of its series' ranges of a label
        set, unless a job that is running (or still has chunks leased)
        writes an overlapping range: then (that job, its status,
        "instrument granularity").  While a job holds its ranges no other
        job writes there, so a range without label rows stays so until it
        is written (``Segment.fresh``).  ``check``: only look."""
        other, status, series = self.run(
            "claim_writer", [self._writers_key(set_id)],
            [job_id, self._job_prefix(), _wanted(ranges), "check" if check else ""])
        return (other, status, series) if other else None

    def _job_prefix(self) -> str:
        """What the scripts put before another job's id to read its status."""
        return self.key("")

    def _writers_key(self, set_id: str) -> str:
        return self.shared_key(f"writers:{set_id}")


def _wanted(ranges: Ranges) -> str:
    return json.dumps([[f"{i} {g}", str(a), str(b)] for i, g, a, b in ranges])
