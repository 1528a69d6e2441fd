"""What a job is: its series, range, labels and how it runs.  Pure: no I/O.

A ``JobSpec`` is built once from a request (``make_spec``: every name and
parameter checked, the labels resolved with their defaults filled in) and
stored as the job's record in Redis (``to_record``); a process that runs or
shows the job rebuilds it from there with ``JobSpec.from_record``, the one
reader of a stored spec.  The labels travel resolved (``ResolvedLabel``:
names and typed parameter values), so nothing after ``make_spec`` parses
them again.

A field added to ``JobSpec`` is stored and read back by ``to_record`` and
``from_record`` as it is (a str, int, bool or tuple of names), and a record
stored before it existed reads as its default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

from .. import labels as registry
from ..common.granularity import parse_granularity, parse_instrument
from ..errors import InvalidInput

PRIORITIES = ("low", "normal", "high")
# The same bounds for the CLI, the API and Python callers.  A chunk size past
# UInt64 reached ClickHouse's intDiv as 0 (a division by zero).
MAX_CHUNK_SIZE = 100_000_000
MAX_WORKERS = 1024
ALL = "*"
# ClickHouse's DateTime64 covers 1900..2299; a date outside cannot name candles.
_FIRST = datetime(1900, 1, 1, tzinfo=UTC)
_LAST = datetime(2300, 1, 1, tzinfo=UTC)
EVER = (int(_FIRST.timestamp() * 1000), int(_LAST.timestamp() * 1000))  # every time a candle can have

Series = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class JobSpec:
    instruments: tuple[str, ...]     # ("*",): every instrument in the store
    granularities: tuple[str, ...]
    start_ms: int
    end_ms: int                      # exclusive
    resolved: tuple[registry.ResolvedLabel, ...]  # every parameter filled in; stored as labels, params
    chunk_size: int                  # 0 until planned: the job's chunk size (plan.chunk_size)
    workers: int
    priority: str = "normal"
    force: bool = False
    backend: str = "cpu"
    min_workers: int = 1
    label_set: str = field(default="")
    series: Series = ()              # the (instrument, granularity) pairs run
    kind: str = "backfill"           # or "update"
    source: str = ""                 # a registered source; "": the built-in candles table
    bars: str = ""                   # the store table of the job's copy of its derived bars ("": none)
    # Why a stored record's labels do not resolve (its params edited, or a
    # label changed since): every chunk fails with it, as bad data.  Not stored.
    invalid: str = field(default="", compare=False, metadata={"stored": False})

    @property
    def labels(self) -> list[str]:
        return [r.name for r in self.resolved]

    @property
    def params(self) -> dict[str, dict[str, Any]]:
        return {r.name: r.params for r in self.resolved}

    @property
    def instrument(self) -> str:
        """The job's instruments, for display and metrics labels."""
        return ",".join(dict.fromkeys(i for i, _ in self.series)) or ",".join(self.instruments)

    @property
    def granularity(self) -> str:
        return ",".join(dict.fromkeys(g for _, g in self.series)) or ",".join(self.granularities)

    def ranges(self) -> list[tuple[str, str, int, int]]:
        """What the job writes: (instrument, granularity, start, end) per series."""
        return [(i, g, self.start_ms, self.end_ms) for i, g in self.series]

    def overlaps(self, other: JobSpec) -> bool:
        """Whether two jobs write the same labels somewhere: the same label
        set and source, a series in common, and ranges that meet."""
        return (self.label_set == other.label_set and self.source == other.source
                and bool(set(self.series) & set(other.series))
                and self.start_ms < other.end_ms and other.start_ms < self.end_ms)

    def with_series(self, series: Iterable[tuple[str, str]]) -> JobSpec:
        return replace(self, series=tuple((s[0], s[1]) for s in series))

    def to_record(self) -> dict[str, Any]:
        """The fields stored in the job's Redis hash (JSON-able values)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("stored") is False:
                continue
            if f.name == "resolved":
                out["labels"], out["params"] = self.labels, self.params
            elif f.name == "series":
                out["series"] = [list(s) for s in value]
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = value
        # What the views and metrics show, stored with the spec.
        out["instrument"], out["granularity"] = self.instrument, self.granularity
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> JobSpec:
        """The spec of a stored job (``to_record``'s fields, as the state
        decodes them).  Its labels were resolved when the job was made and
        are stored resolved, so they are taken as they are, not resolved
        again: a parameter a label gained since is filled with its default,
        one it dropped is left out.  A label the registry no longer knows
        makes the spec ``invalid`` (every chunk then fails saying why)."""
        series: Series = tuple((s[0], s[1]) for s in record.get("series") or ()) or (
            ((record["instrument"], record["granularity"]),) if "instrument" in record else ())
        params = record.get("params") or {}
        names = list(record.get("labels") or ())
        invalid = ""
        resolved: list[registry.ResolvedLabel] = []
        for name in names:
            try:
                label = registry.get(name)
            except InvalidInput as exc:
                invalid = str(exc)
                continue
            stored = params.get(name) or {}
            resolved.append(registry.ResolvedLabel(
                label, {p.name: stored.get(p.name, p.default) for p in label.params}))
        values: dict[str, Any] = {
            "series": series, "resolved": tuple(resolved), "invalid": invalid,
            "instruments": tuple(record.get("instruments") or dict.fromkeys(i for i, _ in series)),
            "granularities": tuple(record.get("granularities") or dict.fromkeys(g for _, g in series)),
        }
        for f in fields(cls):
            if f.name in values or record.get(f.name) in ("", None):
                continue
            raw, default = record[f.name], f.default
            if isinstance(default, bool) or f.type == "bool":
                values[f.name] = raw in (True, 1, "1", "true", "True")
            elif isinstance(default, int) or f.type == "int":
                values[f.name] = int(raw)
            elif isinstance(default, tuple):
                values[f.name] = tuple(raw)
            else:
                values[f.name] = raw
        values.setdefault("min_workers", values.get("workers", 1))
        return cls(**values)


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
              labels: list[str] | None, params: Mapping[str, Mapping[str, Any]] | None,
              chunk_size: int | None, workers: int, priority: str = "normal", force: bool = False,
              backend: str = "cpu", min_workers: int | None = None) -> JobSpec:
    """Validate a request and fill in defaults; raises InvalidInput naming the problem.

    ``instrument`` and ``granularity``: one name, a comma-separated list or a
    list; ``"*"`` as the instrument means every instrument in the store (the
    service finds them).  Without ``start`` or ``end`` the range is open on
    that side (``EVER``); the service narrows it to the series' candles.
    ``params``: typed values (a list for a list parameter) or their text.
    ``chunk_size`` None: chosen when the job is planned (``plan.chunk_size``)."""
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
    if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk size must be 1..{MAX_CHUNK_SIZE:,}, got {chunk_size}")
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInput(f"workers must be 1..{MAX_WORKERS}, got {workers}")
    if priority not in PRIORITIES:
        raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    lo = workers if min_workers is None else min_workers
    if not 1 <= lo <= workers:
        raise InvalidInput(f"min workers must be between 1 and workers ({workers}), got {lo}")
    series = () if insts == (ALL,) else tuple((i, g) for i in insts for g in grans)
    return JobSpec(insts, grans, start_ms, end_ms, tuple(resolved), chunk_size or 0, workers,
                   priority, force, backend, lo, registry.label_set_id(resolved), series)


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
