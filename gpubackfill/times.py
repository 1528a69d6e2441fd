"""Times as users read them: UTC ISO 8601, to the second."""

from __future__ import annotations

import time


def iso(ms: int | None) -> str | None:
    """``2024-01-31T00:00:00Z`` for epoch milliseconds (None for None)."""
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
