"""What a job is, and how it splits into chunks.  Pure: no I/O.

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

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

from .. import labels as registry
from ..errors import InvalidInput
from ..granularity import parse_granularity, parse_instrument
from .result import Segment

PRIORITIES = ("low", "normal", "high")
# The same bounds for the CLI, the API and Python callers.  A chunk size past
# UInt64 reached ClickHouse's intDiv as 0 (a division by zero).
MAX_CHUNK_SIZE = 100_000_000
MAX_WORKERS = 1024
MAX_SEGMENTS = 64  # series packed into one chunk (bounds one query's size)
ALL = "*"
# ClickHouse's DateTime64 covers 1900..2299; a date outside cannot name candles.
_FIRST = datetime(1900, 1, 1, tzinfo=UTC)
_LAST = datetime(2300, 1, 1, tzinfo=UTC)
EVER = (int(_FIRST.timestamp() * 1000), int(_LAST.timestamp() * 1000))  # every time a candle can have


@dataclass(frozen=True)
class JobSpec:
    instruments: tuple[str, ...]     # ("*",): every instrument in the store
    granularities: tuple[str, ...]
    start_ms: int
    end_ms: int                      # exclusive
    labels: list[str]
    params: dict[str, dict[str, Any]]  # resolved: every parameter filled in
    chunk_size: int
    workers: int
    priority: str = "normal"
    force: bool = False
    backend: str = "cpu"
    min_workers: int = 1
    label_set: str = field(default="")
    series: tuple[tuple[str, str], ...] = ()  # the (instrument, granularity) pairs run
    kind: str = "backfill"                    # or "update"
    source: str = ""                          # a registered source; "": the built-in candles

    @property
    def instrument(self) -> str:
        """The job's instruments, for display and metrics labels."""
        return ",".join(dict.fromkeys(i for i, _ in self.series)) or ",".join(self.instruments)

    @property
    def granularity(self) -> str:
        return ",".join(dict.fromkeys(g for _, g in self.series)) or ",".join(self.granularities)

    def resolved(self) -> list[registry.ResolvedLabel]:
        return registry.resolve(self.labels, self.params)

    def with_series(self, series: Iterable[tuple[str, str]]) -> JobSpec:
        return replace(self, series=tuple((s[0], s[1]) for s in series))

    def as_fields(self) -> dict[str, Any]:
        out = asdict(self)
        out["series"] = [list(s) for s in self.series]
        out["instruments"] = list(self.instruments)
        out["granularities"] = list(self.granularities)
        out["instrument"], out["granularity"] = self.instrument, self.granularity
        return out


def parse_names(value: str | Iterable[str] | None, what: str) -> list[str]:
    """Comma-separated and/or repeated names, in order, each once."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def make_spec(instrument: str | Iterable[str], granularity: str | Iterable[str],
              start: str | datetime | date | None, end: str | datetime | date | None,
              labels: list[str] | None, params: dict[str, dict[str, Any]] | None,
              chunk_size: int, workers: int, priority: str = "normal", force: bool = False,
              backend: str = "cpu", min_workers: int | None = None) -> JobSpec:
    """Validate a request and fill in defaults; raises InvalidInput naming the problem.

    ``instrument`` and ``granularity``: one name, a comma-separated list or a
    list; ``"*"`` as the instrument means every instrument in the store (the
    service finds them).  Without ``start`` or ``end`` the range is open on
    that side (``EVER``); the service narrows it to the series' candles."""
    names = parse_names(instrument, "instrument")
    if not names:
        raise InvalidInput("no instrument given (a name, a comma-separated list, or '*')")
    insts = (ALL,) if ALL in names else tuple(parse_instrument(i) for i in names)
    if ALL in names and len(names) > 1:
        raise InvalidInput("'*' means every instrument: give it alone")
    grans = tuple(parse_granularity(g) for g in parse_names(granularity, "granularity"))
    if not grans:
        raise InvalidInput("no granularity given (e.g. M5, or M5,H1)")
    start_ms = EVER[0] if start is None else parse_time(start, "start date", end_of_day=False)
    end_ms = EVER[1] if end is None else parse_time(end, "end date", end_of_day=True)
    if end_ms <= start_ms:
        raise InvalidInput(f"end date {end} is not after start date {start}")
    chosen = list(labels) if labels else list(registry.DEFAULT_LABELS)
    resolved = registry.resolve(chosen, params)
    refused = registry.not_in_jobs(resolved)
    if refused:
        raise InvalidInput(refused)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk size must be 1..{MAX_CHUNK_SIZE:,}, got {chunk_size}")
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInput(f"workers must be 1..{MAX_WORKERS}, got {workers}")
    if priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    lo = workers if min_workers is None else min_workers
    if not 1 <= lo <= workers:
        raise InvalidInput(f"min workers must be between 1 and workers ({workers}), got {lo}")
    series = () if insts == (ALL,) else tuple((i, g) for i in insts for g in grans)
    return JobSpec(insts, grans, start_ms, end_ms, [r.name for r in resolved],
                   {r.name: r.params for r in resolved}, chunk_size, workers, priority, force,
                   backend, lo, registry.label_set_id(resolved), series)


def parse_time(value: str | datetime | date, what: str, end_of_day: bool) -> int:
    """Milliseconds since the epoch (UTC) of a date or datetime.

    A bare date as an end means the end of that day (the range includes it);
    datetimes are taken as given, naive ones as UTC.
    """
    text = str(value).strip()
    try:
        if isinstance(value, datetime):
            dt = value
        elif isinstance(value, date):
            dt = datetime.combine(value, dtime(0), UTC)
            if end_of_day:
                dt += timedelta(days=1)
        elif len(text) == 10:
            dt = datetime.combine(date.fromisoformat(text), dtime(0), UTC)
            if end_of_day:
                dt += timedelta(days=1)  # 9999-12-31 overflows here
        else:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        inside = _FIRST <= dt <= _LAST
    except OverflowError:
        inside = False
    except ValueError:
        raise InvalidInput(f"bad {what} {text!r}: use YYYY-MM-DD or an ISO 8601 time") from None
    if not inside:
        raise InvalidInput(f"{what} {text!r} is outside 1900-01-01..2299-12-31")
    return int(dt.timestamp() * 1000)


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
