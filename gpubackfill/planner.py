"""What a job is, and how it splits into chunks.  Pure: no I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from typing import Any

from . import labels as registry
from .errors import InvalidInput
from .granularity import parse_granularity, parse_instrument

PRIORITIES = ("low", "normal", "high")
# The same bounds for the CLI, the API and Python callers.  A chunk size past
# UInt64 reached ClickHouse's intDiv as 0 (a division by zero).
MAX_CHUNK_SIZE = 100_000_000
MAX_WORKERS = 1024
# ClickHouse's DateTime64 covers 1900..2299; a date outside cannot name candles.
_FIRST = datetime(1900, 1, 1, tzinfo=timezone.utc)
_LAST = datetime(2300, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class JobSpec:
    instrument: str
    granularity: str
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

    def resolved(self) -> list[registry.ResolvedLabel]:
        return registry.resolve(self.labels, self.params)

    def as_fields(self) -> dict[str, Any]:
        return asdict(self)


def make_spec(instrument: str, granularity: str, start: str | datetime | date,
              end: str | datetime | date, labels: list[str] | None,
              params: dict[str, dict[str, Any]] | None, chunk_size: int, workers: int,
              priority: str = "normal", force: bool = False, backend: str = "cpu",
              min_workers: int | None = None) -> JobSpec:
    """Validate a request and fill in defaults; raises InvalidInput naming the problem."""
    inst = parse_instrument(instrument)
    gran = parse_granularity(granularity)
    start_ms = parse_time(start, "start date", end_of_day=False)
    end_ms = parse_time(end, "end date", end_of_day=True)
    if end_ms <= start_ms:
        raise InvalidInput(f"end date {end} is not after start date {start}")
    names = list(labels) if labels else list(registry.DEFAULT_LABELS)
    resolved = registry.resolve(names, params)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk size must be 1..{MAX_CHUNK_SIZE:,}, got {chunk_size}")
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInput(f"workers must be 1..{MAX_WORKERS}, got {workers}")
    if priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    lo = workers if min_workers is None else min_workers
    if not 1 <= lo <= workers:
        raise InvalidInput(f"min workers must be between 1 and workers ({workers}), got {lo}")
    return JobSpec(inst, gran, start_ms, end_ms, [r.name for r in resolved],
                   {r.name: r.params for r in resolved}, chunk_size, workers, priority, force,
                   backend, lo, registry.label_set_id(resolved))


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
            dt = datetime.combine(value, dtime(0), timezone.utc)
            if end_of_day:
                dt += timedelta(days=1)
        elif len(text) == 10:
            dt = datetime.combine(date.fromisoformat(text), dtime(0), timezone.utc)
            if end_of_day:
                dt += timedelta(days=1)  # 9999-12-31 overflows here
        else:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
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
