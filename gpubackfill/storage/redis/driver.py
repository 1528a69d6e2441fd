"""The driver lock: the one process that drives a job.

    P:job:J:driver       string the process driving the job (expires)
"""

from __future__ import annotations

from .base import StateBase


class Driver(StateBase):
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
