"""One read, one computation and one insert for a run of consecutive small
chunks in one task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Settings
from ..errors import InvalidCandles
from ..storage.clickhouse_store import Store
from ..storage.connections import connections
from .task import ChunkTask, finer_series


class SharedIO:
    """One read, one computation and one insert for a run of consecutive
    chunks of a series.

    Small chunks go several to a Dask task (``run_chunks``).  When they are
    consecutive ranges of one series and a first backfill of them (the
    plan's 'fresh' hint), each chunk's load is cut from one read of the
    whole run (halo included), and their label rows go to ClickHouse in one
    insert after the last chunk: one statement and one part instead of one
    per chunk.  Their labels are cut from one computation over that read
    (``labels``), once it validates as a whole: a chunk of 10k candles
    computed alone also computes its 2k-candle look-back, and pays the
    kernels' per-call cost (together a third of a 10k chunk's compute).
    The run's read holds every chunk's halo, so each chunk's rows are the
    ones it would compute alone, its volatility warmed up from further
    back (LABELS.md: chunking changes no row beyond 1e-9 relative).  The
    fingerprint, the lease and the record stay each chunk's own.  Any
    other call goes to the store itself."""

    def __init__(self, store: Store, tasks: tuple[ChunkTask, ...]):
        self.store = store
        self.key = tasks[0].key(tasks[0].segments[0])
        self.first, self.last = tasks[0].segments[0], tasks[-1].segments[0]
        self.label_set, self.job_id = tasks[0].label_set, tasks[0].job_id
        self._read: tuple[Any, np.ndarray] | None = None
        # The run's labels over its whole read (None: not computed yet;
        # False: its candles do not validate as a whole, each chunk computes alone).
        self._labels: Any = None
        self._cut: dict[int, tuple[int, int]] = {}  # a chunk's start_ms -> its rows in the run's labels
        self._rows: dict[int, tuple[int, Any]] = {}  # a chunk's start_ms -> (its end_ms, its labels)

    @staticmethod
    def for_run(settings: Settings, tasks: tuple[ChunkTask, ...]) -> SharedIO | None:
        if (len(tasks) < 2 or tasks[0].invalid
                or any(len(t.segments) != 1 or not t.segments[0].fresh for t in tasks)):
            return None  # a job whose labels do not resolve fails each chunk on its own
        segs = [t.segments[0] for t in tasks]
        key = tasks[0].key(segs[0])
        resolved = tasks[0].resolved
        if (any(t.key(g) != key for t, g in zip(tasks, segs))
                or any(b.start_ms != a.end_ms for a, b in zip(segs, segs[1:]))
                or finer_series(resolved, key) is not None):
            return None  # the finer candles' reads are each chunk's own
        store, _ = connections(settings)
        return SharedIO(store, tasks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def load_many(self, parts: list[tuple], back: int, ahead: int, *, side: bool = False
                  ) -> list[tuple[Any, int, int]]:
        key, a, b, *_ = parts[0]
        if len(parts) != 1 or key != self.key or a < self.first.start_ms or b > self.last.end_ms:
            return self.store.load_many(parts, back, ahead, side=side)
        if self._read is None:
            table, _, _ = self.store.load(self.key, self.first.start_ms, self.last.end_ms, back, ahead,
                                          self.first.lo_ms, self.last.hi_ms, side=side)
            self._read = table, table.column("ts").to_numpy()
        table, ts = self._read
        i0, i1 = int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b))
        lo, hi = max(i0 - back, 0), min(i1 + ahead, len(ts))
        return [(table.slice(lo, hi - lo), i0 - lo, i1 - i0)]

    def labels(self, a: int, b: int, compute: Callable[[Any], Any]) -> tuple[Any, int, int] | None:
        """The labels of the chunk ``[a, b)``: the run's labels (computed by
        ``compute`` from the whole read, at its first call), the chunk's
        first row in them and its row count.  None where the chunk is to
        compute its own: the run was not read, or its candles do not
        validate as a whole (the chunk holding the bad row then names it)."""
        if self._read is None or a < self.first.start_ms or b > self.last.end_ms:
            return None
        table, ts = self._read
        if self._labels is None:
            try:
                self._labels = compute(table)
            except InvalidCandles:
                self._labels = False
        if self._labels is False:
            return None
        i0, i1 = int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b))
        self._cut[a] = (i0, i1 - i0)
        return self._labels, i0, i1 - i0

    def write_labels_many(self, set_id: str, writes: list[tuple], job_id: str, fresh: bool = False,
                          record: bool = True) -> None:
        if not fresh or record or len(writes) != 1 or writes[0][0] != self.key:
            self.store.write_labels_many(set_id, writes, job_id, fresh=fresh, record=record)
            return
        _, a, b, labels, _, _ = writes[0]
        self._rows[a] = (b, labels)  # a retry replaces its first try

    def insert(self, starts: list[int]) -> None:
        """The label rows of the chunks starting at ``starts`` (done, and
        still leased), in one insert."""
        keep = set(starts)
        rows = [(a, b, labels) for a, (b, labels) in sorted(self._rows.items()) if a in keep]
        if not rows:
            return
        cuts = [self._cut[a] for a, _, _ in rows if a in self._cut]
        # Only chunks whose rows were cut from the run's labels have a cut.
        if len(cuts) == len(rows) and all(p[0] + p[1] == q[0] for p, q in zip(cuts, cuts[1:])):
            # Adjacent cuts of the run's labels: one slice, which chDB reads as one block.
            body = self._labels.slice(cuts[0][0], sum(n for _, n in cuts))
        else:
            body = pa.concat_tables([labels for _, _, labels in rows])
        self.store.write_labels(self.key, self.label_set, rows[0][0], rows[-1][1], body, "", 0,
                                self.job_id, fresh=True, record=False)
