"""Who writes where: one active job per spec, and per label set the
series ranges each running job writes.

    P:spec:D             string the active job of spec digest D
    P:writers:S          hash   per series of label set S: "job,start,end;..."
"""

from __future__ import annotations

import json

from ...jobs.machine import ACTIVE_JOB_STATES, TABLES
from .base import StateBase, now_ms
from .jobs import check_step

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

    def start_writing(self, job_id: str, set_id: str, ranges: Ranges
                      ) -> tuple[str, tuple[str, str, str] | None]:
        """Move a job to running ('execute') and claim its writes in one
        atomic step: (new status, None), or (its status, the job that writes
        an overlapping range) when the claim is refused and nothing changed."""
        out = self.run("start", [self.key(job_id), self.key(job_id, "events"), self._writers_key(set_id)],
                       [job_id, self._job_prefix(), _wanted(ranges), now_ms(), TABLES])
        check_step(job_id, "execute", out[0], out[1])
        if out[0] == "writer":
            return "", (out[1], out[2], out[3])
        return out[1], None

    def _job_prefix(self) -> str:
        """What the scripts put before another job's id to read its status."""
        return self.key("")

    def _writers_key(self, set_id: str) -> str:
        return self.shared_key(f"writers:{set_id}")


def _wanted(ranges: Ranges) -> str:
    return json.dumps([[f"{i} {g}", str(a), str(b)] for i, g, a, b in ranges])
