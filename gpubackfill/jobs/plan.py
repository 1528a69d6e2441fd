"""How a job splits into chunks: every planning decision.  Pure: no I/O.

The store answers counts and bounds (``engine/submit.py`` asks it); the
chunk size, the series a job runs, its range, its runs and chunks, and an
update's stale and missing chunks are decided here.

A job covers one or many series (instrument x granularity) over one date
range.  Its chunks share one queue:

* a series with at least ``chunk_size`` candles in the range is cut into
  runs of ``chunk_size`` candles, one segment per chunk;
* smaller series are packed whole, several to a chunk, up to
  ``chunk_size`` candles (and ``MAX_SEGMENTS`` series), so that a universe
  of short series pays the per-chunk cost (queries, a lease, a task) once
  per pack rather than once per series;
* chunks are queued smallest series first (shortest remaining work first):
  of all orders it has the most series finished, and usable, at any moment,
  and a long series cannot hold the short ones back.  Every chunk of a job
  runs in the same cluster, so the job's end is not delayed by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..common.granularity import GRANULARITIES
from ..common.times import iso
from ..config import AUTO_CHUNK_SIZES, AUTO_MEMORY_BUDGET, BYTES_PER_CANDLE
from ..errors import InvalidInput
from .result import Segment
from .spec import ALL, JobSpec, make_spec

MAX_SEGMENTS = 64  # series packed into one chunk (bounds one query's size)


def plan_chunks(starts: list[tuple[int, int]], end_ms: int) -> list[tuple[int, int, int]]:
    """(start ms, end ms exclusive, rows) per chunk from each chunk's first ts."""
    out = []
    for i, (t, rows) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else end_ms
        out.append((t, nxt, rows))
    return out


def plan_job(runs: Sequence[Sequence[tuple[int, ...]]], chunk_size: int,
             max_segments: int = MAX_SEGMENTS) -> list[tuple[Segment, ...]]:
    """The job's chunks in queue order, from each series' runs ((start ms,
    end ms, candles) as ``plan_chunks`` gives them, or with the halo bounds
    (lo ms, hi ms) after them as ``Store.chunk_plan`` does; the list index
    is the series' index in the job).

    A run of ``chunk_size`` candles is a chunk by itself; shorter runs (a
    small series, the end of a long one, an update's tail) are packed
    together up to ``chunk_size`` candles.  See the module docstring for
    the order."""
    size = [sum(r[2] for r in rs) for rs in runs]
    order = lambda seg: (size[seg.series], seg.series, seg.start_ms)  # noqa: E731
    whole: list[Segment] = []
    small: list[Segment] = []
    for i, rs in enumerate(runs):
        for a, b, n, *bounds in rs:
            lo, hi = bounds if bounds else (0, 0)
            (whole if n >= chunk_size else small).append(Segment(i, a, b, n, lo, hi))
    chunks: list[tuple[Segment, ...]] = [(seg,) for seg in whole]
    pack: list[Segment] = []
    for seg in sorted(small, key=order):
        if pack and (sum(s.rows for s in pack) + seg.rows > chunk_size or len(pack) >= max_segments):
            chunks.append(tuple(pack))
            pack = []
        pack.append(seg)
    if pack:
        chunks.append(tuple(pack))
    return sorted(chunks, key=lambda c: order(c[0]))


def mark_fresh(chunks: list[tuple[Segment, ...]], spans: dict[int, tuple[int, int]]
               ) -> list[tuple[Segment, ...]]:
    """Flag the segments whose range holds no label rows: ``spans`` is the
    (first, last) ts of each series' label rows when the job was planned
    (series absent there have none)."""
    def fresh(seg: Segment) -> bool:
        span = spans.get(seg.series)
        return span is None or seg.end_ms <= span[0] or seg.start_ms > span[1]
    return [tuple(replace(seg, fresh=fresh(seg)) for seg in chunk) for chunk in chunks]


# -- the chunk size --------------------------------------------------------------

def chunk_size(asked: int | None, workers: int, candles: int | None = None, *,
               fixed: int | None = None, memory_limit: int | None = None) -> int:
    """The one chunk-size rule: the size asked for, else BATCH_CHUNK_SIZE
    (``fixed``), else the largest of ``AUTO_CHUNK_SIZES`` within the memory
    budget that still gives every worker two chunks of ``candles`` (one 1M
    chunk of a 1M-candle job would leave a worker idle; unknown: no such
    bound)."""
    if asked:
        return asked
    if fixed:
        return fixed
    budget = memory_limit or AUTO_MEMORY_BUDGET
    share = candles // (2 * workers) if candles else None
    for size in AUTO_CHUNK_SIZES:
        if workers * size * BYTES_PER_CANDLE <= budget and (share is None or size <= share):
            return size
    return AUTO_CHUNK_SIZES[-1]


def chunk_size_choices(asked: int | None, fixed: int | None = None) -> tuple[int, ...]:
    """Every size ``chunk_size`` can choose with these ``asked`` and ``fixed``,
    whatever the candles: a plan that must cut its marks before the total
    is known cuts them for each."""
    return (asked,) if asked else (fixed,) if fixed else AUTO_CHUNK_SIZES


def marks_of(ts: np.ndarray, chunk_size: int, back: int, ahead: int) -> dict[int, int]:
    """``Store.chunk_marks``' rows of a series whose ts in the range are all
    known (sorted): those that start a run of ``chunk_size`` or bound a
    halo of ``back``/``ahead`` rows, by 1-based row number."""
    rn = np.arange(1, len(ts) + 1, dtype=np.int64)
    keep = ((rn - 1) % chunk_size == 0) | ((rn - 1 + back) % chunk_size == 0) | \
        ((rn - ahead) % chunk_size == 0)
    return dict(zip(rn[keep].tolist(), np.asarray(ts)[keep].tolist()))


# -- a backfill -------------------------------------------------------------------

def wanted_series(spec: JobSpec, present: Mapping[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The series a request asks for: its own pairs, or with ``*`` every
    series of its granularities that the store has (``present``)."""
    if spec.instruments != (ALL,):
        return list(spec.series)
    wanted = [k for k in sorted(present) if k[1] in spec.granularities]
    if not wanted:
        grans = sorted({g for _, g in present}, key=list(GRANULARITIES).index)
        raise InvalidInput(f"no instrument has {','.join(spec.granularities)} candles "
                           f"(the store has {','.join(grans) or 'none yet'}: see `gpubackfill series`)")
    return wanted


def narrow(spec: JobSpec, spans: Sequence[tuple[int, int]], from_first: bool, to_last: bool) -> JobSpec:
    """A range left open: from the first candle of the job's series
    (``spans``: each one's first and last ts), up to and including the last."""
    if not spans:
        return spec
    start_ms = min(lo for lo, _ in spans) if from_first else spec.start_ms
    end_ms = max(hi for _, hi in spans) + 1 if to_last else spec.end_ms
    return replace(spec, start_ms=start_ms, end_ms=max(end_ms, start_ms + 1))


def series_runs(n: int, ts_at: Mapping[int, int], chunk_size: int, back: int, ahead: int,
                end_ms: int) -> list[tuple[int, int, int, int, int]]:
    """A series' runs of ``chunk_size`` of its ``n`` candles in a range
    ending at ``end_ms``, as (start ms, end ms exclusive, rows, lo ms, hi
    ms): ``lo``/``hi`` are the ts of the first and last row a chunk reads
    with a halo of ``back``/``ahead`` rows, or 0 where that row lies
    outside the range (the first and last chunk): ``load`` then finds it
    itself.  ``ts_at``: the ts of the candles (1-based row numbers in the
    range) that start a run or bound a halo (``Store.chunk_marks``)."""
    firsts = list(range(0, n, chunk_size))
    runs = []
    for c, i0 in enumerate(firsts):
        rows = min(chunk_size, n - i0)
        end = ts_at[firsts[c + 1] + 1] if c + 1 < len(firsts) else end_ms
        lo = ts_at.get(i0 - back + 1, 0) if c > 0 and i0 >= back else 0
        j = i0 + rows - 1 + ahead
        hi = ts_at.get(j + 1, 0) if c + 1 < len(firsts) and j < n else 0
        runs.append((ts_at[i0 + 1], end, rows, lo, hi))
    return runs


@dataclass(frozen=True)
class Planned:
    """A job ready to queue: its spec (series and chunk size settled), its
    chunks in queue order, and the series asked for that it skips."""
    spec: JobSpec
    chunks: list[tuple[Segment, ...]]
    skipped: list[str]
    job_id: str = ""  # the id it was planned for (its copy of derived bars is named by it)


def backfill(spec: JobSpec, wanted: Sequence[tuple[str, str]],
             runs: Mapping[tuple[str, str], Sequence[tuple[int, ...]]], job_id: str = "") -> Planned | None:
    """The job over the wanted series that have runs (None: none has);
    ``spec.chunk_size`` is the one the runs were cut with."""
    chosen = [k for k in wanted if runs.get(k)]
    if not chosen:
        return None
    skipped = [f"{i} {g}" for i, g in wanted if not runs.get((i, g))]
    return Planned(spec.with_series(chosen), plan_job([runs[k] for k in chosen], spec.chunk_size),
                   skipped, job_id)


def _day(ms: int) -> str:
    """A date for a range bound on a day boundary (the end given as a date
    includes its day), else the full time."""
    whole = ms % 86_400_000 in (0, 86_399_999)
    return (iso(ms) or "")[:10] if whole else (iso(ms) or "")


def no_candles(spec: JobSpec, wanted: Sequence[tuple[str, str]]) -> str:
    """Why a job over ``wanted`` has nothing to run (a lone series' own
    bounds are added by the caller, who reads them)."""
    if len(wanted) == 1:
        inst, gran = wanted[0]
        return f"no {inst} {gran} candles from {_day(spec.start_ms)} to {_day(spec.end_ms - 1)}"
    return (f"none of {', '.join(f'{i} {g}' for i, g in wanted)} has candles from "
            f"{_day(spec.start_ms)} to {_day(spec.end_ms - 1)}")


# -- an update --------------------------------------------------------------------

@dataclass(frozen=True)
class Computed:
    """One computed chunk range of a series in a label set (the manifest)."""
    start_ms: int
    end_ms: int
    rows: int
    incomplete: int
    computed_ms: int


@dataclass
class UpdatePlan:
    """One update job: a label set over the series that need work."""
    set_id: str
    labels: list[str]
    params: dict
    series: list[tuple[str, str]]
    chunks: list[tuple[Segment, ...]]
    start_ms: int
    end_ms: int
    stale: int                # computed chunks planned again
    new: int                  # chunks of candles never computed


def stale_flags(records: Sequence[Computed], changes: Sequence[tuple[int, tuple[int, int]]]) -> list[bool]:
    """Per record: stale or not.  ``changes``: each ingest's change to the
    series as (when, (lo, hi)): the ts window it reaches with the label
    set's halo.  A record computed before a change that reaches it is stale."""
    return [any(at > r.computed_ms and r.start_ms <= hi and r.end_ms > lo for at, (lo, hi) in changes)
            for r in records]


def update_tail(records: Sequence[Computed], last_ts: int) -> tuple[int, int] | None:
    """The range of a series' candles after its last computed chunk, or None."""
    last_end = max(r.end_ms for r in records)
    return (last_end, last_ts + 1) if last_ts >= last_end else None


def update(set_id: str, params: dict, members: Sequence[tuple[tuple[str, str], Sequence[Computed],
                                                                Sequence[bool], Sequence[tuple[int, int, int]]]],
           chunk_size: int) -> UpdatePlan | None:
    """The update job of one label set: per series (``members``: its key,
    computed records, their stale flags, and its missing tail's runs as
    ``plan_chunks`` gives them) the stale chunks again, with their own
    boundaries, and the tail; None when all is current."""
    picked: list[tuple[str, str]] = []
    runs, stale_n, new_n = [], 0, 0
    for key, recs, flags, fresh in members:
        mine = sorted((r.start_ms, r.end_ms, r.rows) for r, stale in zip(recs, flags) if stale)
        if mine or fresh:
            picked.append(key)
            runs.append(mine + list(fresh))
            stale_n += len(mine)
            new_n += len(fresh)
    if not picked:
        return None
    chunks = plan_job(runs, chunk_size)
    lo = min(s.start_ms for c in chunks for s in c)
    hi = max(s.end_ms for c in chunks for s in c)
    return UpdatePlan(set_id, list(params), params, picked, chunks, lo, hi, stale_n, new_n)


def update_spec(plan: UpdatePlan, chunk_size: int, workers: int, priority: str, backend: str) -> JobSpec:
    """The spec of an update job: the label set's labels over the plan's
    series and range (its stored parameters are checked as a request's are)."""
    spec = make_spec(list(dict.fromkeys(i for i, _ in plan.series)),
                     list(dict.fromkeys(g for _, g in plan.series)), None, None, plan.labels,
                     plan.params, chunk_size, workers, priority, False, backend)
    return replace(spec.with_series(plan.series), start_ms=plan.start_ms, end_ms=plan.end_ms,
                   kind="update")
