"""Times as users read them: UTC ISO 8601, to the second."""

from __future__ import annotations

import time


def iso(ms: int | None, millis: bool = False) -> str | None:
    """``2024-01-31T00:00:00Z`` for epoch milliseconds (None for None);
    ``millis``: ``2024-01-31T00:00:00.000Z``, for records of exact ranges."""
    if ms is None:
        return None
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return f"{text}.{ms % 1000:03d}Z" if millis else text + "Z"
