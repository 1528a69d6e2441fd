"""Leases on claimed chunks, and the fence a chunk passes before it writes.

    P:job:J:lease        hash   chunk index -> "owner|expires_ms|token", "...|run" once its task started it
    P:job:J:writes       hash   chunk index -> token of the lease its last write was fenced under
"""

from __future__ import annotations

from collections.abc import Sequence

from ...jobs.machine import TABLES
from .base import StateBase, now_ms

STARTED = "|run"  # the end of a started chunk's lease


class Leases(StateBase):
    def leases(self, job_id: str) -> dict[int, int]:
        """Chunk index -> token of its current lease."""
        return {int(i): int(v.removesuffix(STARTED).rsplit("|", 1)[1])
                for i, v in self.call(self.client.hgetall, self.key(job_id, "lease")).items()}

    def started(self, job_id: str) -> set[int]:
        """The leased chunks whose tasks have started them (``start_lease``)."""
        return {int(i) for i, v in self.call(self.client.hgetall, self.key(job_id, "lease")).items()
                if v.endswith(STARTED)}

    def renew_lease(self, job_id: str, idx: int, token: int, lease_ms: int) -> bool:
        """Extend a lease that is still ours; False once it was taken back."""
        return bool(self.run("renew", [self.key(job_id, "lease")], [idx, token, now_ms() + lease_ms]))

    def fence_write(self, job_id: str, idx: int, token: int, lease_ms: int) -> int:
        """Right before a chunk writes: renew its lease if still ours.  0: not
        ours; 1: ours, and the lease's first write; 2: ours, but a run under
        the same lease reached its write before (its rows may be there)."""
        return int(self.run("fence_write", [self.key(job_id, "lease"), self.key(job_id, "writes")],
                            [idx, token, now_ms() + lease_ms]))

    def fence_writes(self, job_id: str, chunks: Sequence[tuple[int, int]], lease_ms: int) -> list[int]:
        """``fence_write`` for each chunk (index, token), in one round trip."""
        keys = [self.key(job_id, "lease"), self.key(job_id, "writes")]
        expires = now_ms() + lease_ms
        return [int(got) for got in self.run_many("fence_write", [(keys, [idx, token, expires])
                                                                  for idx, token in chunks])]

    def start_lease(self, job_id: str, idx: int, token: int, lease_ms: int, behind: bool = False) -> str:
        """Before a chunk starts in its task: renew its lease if it is still
        ours and mark it started (from then on its heartbeat keeps it, not
        the driver).  'ok', 'lost', or for a chunk ``behind`` others in its
        task, the job's status once it no longer runs (the lease then stays
        to be released)."""
        return str(self.run("start", [self.key(job_id, "lease"), self.key(job_id)],
                            [idx, token, now_ms() + lease_ms, "1" if behind else "0"]))

    def start_leases(self, job_id: str, chunks: Sequence[tuple[int, int, bool]], lease_ms: int) -> list[str]:
        """``start_lease`` for each chunk (index, token, behind), in one round trip."""
        keys = [self.key(job_id, "lease"), self.key(job_id)]
        expires = now_ms() + lease_ms
        return [str(got) for got in self.run_many("start", [(keys, [idx, token, expires, "1" if behind else "0"])
                                                            for idx, token, behind in chunks])]

    def renew_leases(self, job_id: str, chunks: Sequence[tuple[int, int]], lease_ms: int) -> list[bool]:
        """``renew_lease`` for each chunk (index, token), in one round trip."""
        keys = [self.key(job_id, "lease")]
        expires = now_ms() + lease_ms
        return [bool(got) for got in self.run_many("renew", [(keys, [idx, token, expires])
                                                             for idx, token in chunks])]

    def keep_waiting(self, job_id: str, chunks: Sequence[tuple[int, int]], lease_ms: int) -> list[int]:
        """Renew, in one call, the leases of chunks (index, token) that have
        not started; the positions in ``chunks`` of those not renewed:
        started (``start_lease``), or no longer ours."""
        args: list[int] = [now_ms() + lease_ms]
        for idx, token in chunks:
            args += [idx, token]
        return [int(k) for k in self.run("keep", [self.key(job_id, "lease")], args)]

    def release(self, job_id: str, idx: int, token: int | None = None) -> bool:
        """A leased chunk back to pending (``token``: only under that lease)."""
        return bool(self.run("release", self._lease_keys(job_id), [idx, "" if token is None else token, TABLES]))

    def expire_leases(self, job_id: str) -> int:
        """Chunks whose leases ran out back to pending; how many."""
        return int(self.run("return_leases", self._lease_keys(job_id), ["expired", now_ms(), TABLES]))

    def release_owner(self, job_id: str, owner: str) -> int:
        """Return every chunk leased by ``owner`` (a driver that is gone) to pending."""
        return int(self.run("return_leases", self._lease_keys(job_id), ["owner", owner, TABLES]))

    def _lease_keys(self, job_id: str) -> list[str]:
        key = self.key
        return [key(job_id), key(job_id, "state"), key(job_id, "lease"), key(job_id, "pending"), key(job_id, "plan")]
