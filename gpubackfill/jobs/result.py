"""What one chunk run reports.

The worker records a ``ChunkResult`` in Redis itself, in the same atomic
step that settles the chunk (``RedisState.complete`` / ``fail``): the job's
counters, its series' counters, the deployment's totals and the ETA sample
change together or not at all.  The driver receives the same object from
the future, but only to react (wait out an outage, fail the job, log); it
never writes the figures again, so nothing is lost when it dies.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """One series' range inside a chunk: a chunk holds one segment, or
    several whole small series packed together (``plan.pack``).

    Two hints from the plan make the chunk's I/O what ClickHouse itself
    would do (``Store.load`` and ``Store.write_labels``):

    * ``lo_ms``/``hi_ms``: the ts of the first and last halo row the chunk
      reads (0 when the plan does not know them: the series' ends, splits);
      the load is then one plain range read, checked on arrival;
    * ``fresh``: the series had no label rows in [start, end) when the job
      was planned, and the job holds the series' writer claim, so the
      chunk's first run writes without asking what is there.  Splits and
      unpacked segments drop both hints (they are not repeated by Lua).
    """
    series: int        # index into the job's series list
    start_ms: int
    end_ms: int        # exclusive
    rows: int          # candles planned in [start_ms, end_ms)
    lo_ms: int = 0
    hi_ms: int = 0
    fresh: bool = False

    def encode(self) -> str:
        head = f"{self.series},{self.start_ms},{self.end_ms},{self.rows}"
        if self.lo_ms or self.hi_ms or self.fresh:
            head += f",{self.lo_ms},{self.hi_ms},{int(self.fresh)}"
        return head

    @staticmethod
    def decode_all(text: str) -> tuple[Segment, ...]:
        out = []
        for part in text.split(";"):
            v = [int(x) for x in part.split(",")]
            hints = (v[4], v[5], bool(v[6])) if len(v) == 7 else (0, 0, False)
            out.append(Segment(v[0], v[1], v[2], v[3], *hints))
        return tuple(out)


def encode_segments(segments) -> str:
    return ";".join(s.encode() for s in segments)


@dataclass(frozen=True)
class SegmentOutcome:
    """Candles labelled and rows written for one segment of a chunk;
    ``cached``: its labels were already there, computed from the same
    candles, so it was skipped (its candles count as done, not as work)."""
    series: int
    candles: int
    rows: int
    planned: int = 0
    cached: bool = False


@dataclass(frozen=True)
class ChunkResult:
    """The outcome of one run of a chunk.

    ``kind``: ``done`` (written or found in the cache), ``retry`` (queued
    again), ``failed`` (dead-lettered), ``split`` (cut in two, both queued),
    ``stale`` (the lease was taken back: nothing written, nothing recorded),
    ``outage`` (a dependency is down: the chunk went back untouched, or its
    record could not be written and its lease will run out).
    """

    index: int
    kind: str
    duration: float = 0.0
    segments: tuple[SegmentOutcome, ...] = ()
    cache_hit: bool = False
    incomplete: int = 0
    # The counters its labels declare (``LabelSpec.counters``), by field.
    counters: dict[str, int] = field(default_factory=dict)
    error: str = ""
    category: str = ""
    retry_after: float = 0.0
    fail_job: bool = False  # a persistent error: the job itself cannot go on
    split_into: int | None = None
    # Seconds per step (load, fingerprint, cache check, validate, compute, write).
    stages: dict[str, float] = field(default_factory=dict, compare=False)
    # The manifest rows of the segments written: (series, start ms, end ms,
    # input hash, rows, incomplete rows, computed-at ms).  Kept with the
    # job in Redis and inserted into ClickHouse by the driver in batches.
    records: tuple[tuple[int, int, int, str, int, int, int], ...] = ()
    # The ETA sample the record adds, (seconds, candles); None: the chunk's
    # own duration and candles; (0.0, 0): none.  Chunks that share one read
    # and one insert (shared_io.SharedIO) are timed together as their task.
    sample: tuple[float, int] | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "done"

    @property
    def candles(self) -> int:
        return sum(s.candles for s in self.segments)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments)

    @property
    def failed(self) -> bool:
        """An attempt that counts as a failure (not a split, stale run or outage)."""
        return self.kind in ("retry", "failed")
