"""What Dask carries to a worker: a chunk's descriptor (never arrays), and
what follows from it: the finer series its labels read, its kernel threads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..jobs.result import Segment
from ..labels import ResolvedLabel, finer_candles
from ..storage.clickhouse_store import SeriesKey


@dataclass(frozen=True)
class ChunkTask:
    job_id: str
    index: int
    token: int
    segments: tuple[Segment, ...]
    names: dict[int, tuple[str, str]]  # series index -> (instrument, granularity)
    resolved: tuple[ResolvedLabel, ...]  # the job's labels, resolved when it was made
    label_set: str
    force: bool
    backend: str
    max_attempts: int
    numba_threads: int = 0
    timeout_s: float = 0.0  # the chunk's deadline (engine/watchdog.py); 0: none
    source: str = ""  # the job's source ("": the built-in candles table)
    invalid: str = ""       # why the job's stored labels do not resolve (JobSpec.invalid)
    bars: str = ""          # the job's copy of its derived bars (JobSpec.bars)

    @property
    def rows(self) -> int:
        """Candles planned in the chunk."""
        return sum(s.rows for s in self.segments)

    def key(self, seg: Segment) -> SeriesKey:
        return SeriesKey(*self.names[seg.series], self.source, self.bars)


def finer_series(resolved: Sequence[ResolvedLabel], key: SeriesKey) -> SeriesKey | None:
    """The finer series of ``key``'s instrument (same source) that a request's labels read, if any."""
    need = finer_candles(resolved)
    return None if need is None else SeriesKey(key.instrument, need.granularity, key.source)


def default_numba_threads(workers: int) -> int:
    """Kernel threads per chunk so that concurrent chunks do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
