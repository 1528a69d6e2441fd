"""The dead-letter queue: chunks given up, one entry each (written by the
failure script, ``Queue.fail``; removed by ``Queue.requeue``).

    P:dlq                hash   "J:chunk" -> dead-letter entry (JSON)
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import InvalidTransition
from .base import StateBase


class DeadLetters(StateBase):
    def dead_letters(self, job_id: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(v) for v in self.call(self.client.hvals, self.shared_key("dlq"))]
        if job_id is not None:
            entries = [e for e in entries if e["job_id"] == job_id]
        return sorted(entries, key=lambda e: (e["time_ms"], e["job_id"], e["chunk"]))

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        raw = self.call(self.client.hget, self.shared_key("dlq"), entry_id)
        if raw is None:
            raise InvalidTransition(f"no dead-letter entry {entry_id!r} (see `gpubackfill dlq list`)")
        return json.loads(raw)

    def purge_dead_letters(self, ids: list[str]) -> int:
        return int(self.call(self.client.hdel, self.shared_key("dlq"), *ids)) if ids else 0
