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

from ..common.granularity import GRANULARITIES
from ..errors import InvalidInput


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
    check_step_counts(*step_counts(ts), granularity)


def step_counts(ts: np.ndarray, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct steps > 0 between consecutive ``ts`` (sorted) and how
    often each occurs; ``before``: the ts just before ``ts[0]``, when ``ts``
    continues a longer series."""
    ts = np.asarray(ts, dtype=np.int64)
    steps = np.diff(ts) if before is None else np.diff(ts, prepend=np.int64(before))
    return np.unique(steps[steps > 0], return_counts=True)


class StepCounts:
    """``step_counts`` of a sorted series seen in pieces (an ingest in
    batches); steps of ``granularity`` (most of them) are counted apart."""

    def __init__(self, granularity: str | None = None) -> None:
        self._expected = GRANULARITIES[granularity] if granularity else None
        self._counts: dict[int, int] = {}
        self._last: int | None = None

    def add(self, ts: np.ndarray) -> None:
        if len(ts) == 0:
            return
        ts = np.asarray(ts, dtype=np.int64)
        steps = np.diff(ts) if self._last is None else np.diff(ts, prepend=np.int64(self._last))
        steps = steps[steps > 0]
        if self._expected is not None:
            usual = steps == self._expected
            n = int(np.count_nonzero(usual))
            if n:
                self._counts[self._expected] = self._counts.get(self._expected, 0) + n
                steps = steps[~usual]
        for value, count in zip(*np.unique(steps, return_counts=True)):
            self._counts[int(value)] = self._counts.get(int(value), 0) + int(count)
        self._last = int(ts[-1])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.fromiter(self._counts, np.int64, len(self._counts))
        counts = np.fromiter(self._counts.values(), np.int64, len(self._counts))
        order = np.argsort(values)  # as np.unique gives them
        return values[order], counts[order]


def check_step_counts(values: np.ndarray, counts: np.ndarray, granularity: str) -> None:
    """``check_step`` from the steps' counts (``step_counts``)."""
    total = int(np.sum(counts))
    if total < 2:
        return
    expected = GRANULARITIES[granularity]
    top = int(np.argmax(counts))  # the smallest of equally frequent steps, as np.unique sorts
    mode = int(values[top])
    share = float(np.sum(counts[values == expected])) / total
    if mode == expected or share >= 0.5:
        return
    named = [g for g, ms in GRANULARITIES.items() if ms == mode]
    hint = f"; it looks like {named[0]}" if named else ""
    raise InvalidInput(f"these candles are most often {_span(mode)} apart ({int(counts[top]) / total:.0%} "
                       f"of steps), not {_span(expected)} as {granularity} means: check --granularity{hint}")
