"""The time order and spacing of a file's candles, checked before ingest.

- Order: many broker exports are newest first.  Rejecting every row as
  "unsorted" helps nobody, so rows are sorted by time (stably: of two rows
  with one ts the one earlier in the file comes first, and the other is still
  rejected as a duplicate) and the report says so.
- Spacing: daily candles ingested as ``M1`` would be accepted and labelled
  with horizons in the wrong unit.  The most frequent step between candles
  is compared with the granularity; weekend and session gaps are rarer than
  the bar step itself, so they do not change it.  A clear mismatch (the most
  frequent step is another, and fewer than half of the steps are the
  granularity's) is refused, naming the granularity the data looks like.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .errors import InvalidInput
from .granularity import GRANULARITIES


def sort_by_time(table: pa.Table) -> tuple[pa.Table, np.ndarray | None]:
    """``table`` in time order, and the file row of each sorted row (None
    when it was in order already)."""
    ts = table.column("ts").to_numpy()
    if len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return table, None
    order = np.argsort(ts, kind="stable")
    return table.take(pa.array(order)), order


def _span(ms: int) -> str:
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000), ("second", 1000)):
        if ms >= size and ms % size == 0:
            n = ms // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{ms} ms"


def check_step(ts: np.ndarray, granularity: str) -> None:
    """Refuse candles whose spacing is clearly not ``granularity``'s.
    ``ts`` sorted; duplicates and single rows say nothing and pass."""
    steps = np.diff(ts)
    steps = steps[steps > 0]
    if len(steps) < 2:
        return
    expected = GRANULARITIES[granularity]
    values, counts = np.unique(steps, return_counts=True)
    mode = int(values[np.argmax(counts)])
    share = float(np.mean(steps == expected))
    if mode == expected or share >= 0.5:
        return
    named = [g for g, ms in GRANULARITIES.items() if ms == mode]
    hint = f"; it looks like {named[0]}" if named else ""
    raise InvalidInput(f"these candles are most often {_span(mode)} apart ({np.max(counts) / len(steps):.0%} "
                       f"of steps), not {_span(expected)} as {granularity} means: check --granularity{hint}")
