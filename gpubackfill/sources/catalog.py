"""Adding, listing, checking and removing sources, against the store.

``define`` checks a definition against the relation itself (its columns and
their types, the ``--where``, the granularity values) before anything is
registered: a bad one is refused with one line naming the source and the
column.  Only ``SELECT``, ``DESCRIBE`` and ``EXPLAIN`` reach the relation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..common.granularity import GRANULARITIES, parse_granularity
from ..errors import DependencyError, InvalidInput
from .source import OURS, REQUIRED, TS_UNITS, Source, base_type, parse_day_start, parse_name
from .sql import check_where, filtered, ident, relation_sql, where_probe

if TYPE_CHECKING:
    from ..storage.clickhouse_store import Store

_NUMBER = ("Float", "Decimal", "Int", "UInt")


def parse_maps(maps: list[str] | tuple[str, ...], name: str) -> dict[str, str]:
    """``ours=theirs`` pairs as a dict; every required column mapped once."""
    out: dict[str, str] = {}
    for item in maps:
        ours, sep, theirs = str(item).partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not theirs:
            raise InvalidInput(f"source {name}: --map {item!r}: use OURS=THEIRS, e.g. ts=time")
        if ours not in OURS:
            raise InvalidInput(f"source {name}: --map {item!r}: {ours!r} is not one of "
                               f"{', '.join(OURS)}")
        if ours in out:
            raise InvalidInput(f"source {name}: --map {ours}= given twice")
        out[ours] = theirs
    missing = [c for c in REQUIRED if c not in out]
    if missing:
        raise InvalidInput(f"source {name}: no --map for {', '.join(missing)} "
                           f"(e.g. --map {missing[0]}=COLUMN)")
    return out


def _zone_name(zone: str, what: str, name: str) -> str:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"source {name}: {what} {zone!r} is not a time zone "
                           f"(e.g. UTC, America/New_York)") from None
    return zone


def define(store: Store, name: str, relation: str, maps: list[str] | tuple[str, ...],
           granularity: str | None = None, ts_unit: str | None = None, tz: str | None = None,
           where: str | None = None, clickhouse_url: str | None = None,
           day_start: str | None = None, day_tz: str | None = None) -> Source:
    """The checked definition of a new source (not yet registered)."""
    name = parse_name(name)
    columns = parse_maps(maps, name)
    if ("granularity" in columns) == (granularity is not None):
        raise InvalidInput(f"source {name}: give either --granularity G or --map granularity=COLUMN")
    gran = parse_granularity(granularity) if granularity is not None else None
    if ts_unit is not None and ts_unit not in TS_UNITS:
        raise InvalidInput(f"source {name}: --ts-unit {ts_unit!r}: one of {', '.join(TS_UNITS)}")
    try:
        rel = relation_sql(relation)
        if where is not None:
            check_where(where)
    except InvalidInput as exc:
        raise InvalidInput(f"source {name}: {exc}") from None
    src = Source(name=name, relation=relation.strip(), columns=columns, granularity=gran,
                 stored=(gran,) if gran else (), ts_unit=ts_unit,
                 tz=_zone_name(tz, "--tz", name) if tz else None, where=where,
                 clickhouse_url=clickhouse_url, day_start=parse_day_start(day_start or "00:00"),
                 day_tz=_zone_name(day_tz or "UTC", "--day-tz", name))
    reader = store.source_reader(src)
    try:
        described = reader.rows(f"DESCRIBE TABLE {rel}")
    except (DependencyError, Exception) as exc:
        raise InvalidInput(f"source {name}: cannot read {relation.strip()}: "
                           f"{_short(exc)}") from None
    types = {str(r[0]): str(r[1]) for r in described}
    for ours, theirs in columns.items():
        if theirs not in types:
            raise InvalidInput(f"source {name}: column {theirs!r} (--map {ours}=) is not in "
                               f"{relation.strip()} (it has {', '.join(types)})")
        _check_type(name, ours, theirs, base_type(types[theirs]), ts_unit)
    if where is not None:
        try:
            reader.rows(where_probe(rel, where))
        except Exception as exc:
            raise InvalidInput(f"source {name}: --where {where!r} does not parse: "
                               f"{_short(exc)}") from None
    src = replace(src, types={theirs: types[theirs] for theirs in columns.values()})
    if gran is None:
        col = ident(columns["granularity"])
        try:
            values = [str(v) for (v,) in reader.rows(
                f"SELECT DISTINCT toString({col}) FROM {filtered(rel, where)} LIMIT 100")]
        except Exception as exc:
            raise InvalidInput(f"source {name}: cannot read {relation.strip()}: {_short(exc)}") from None
        unknown = [v for v in values if v not in GRANULARITIES]
        if unknown:
            raise InvalidInput(f"source {name}: column {columns['granularity']!r} (--map granularity=) "
                               f"holds {unknown[0]!r}, not a granularity "
                               f"({', '.join(GRANULARITIES)})")
        src = replace(src, stored=tuple(g for g in GRANULARITIES if g in values))
    return src


def _check_type(name: str, ours: str, theirs: str, t: str, ts_unit: str | None) -> None:
    where = f"source {name}: column {theirs!r} (--map {ours}=) is {t}"
    if ours == "ts":
        if t.startswith(("Int", "UInt")):
            if ts_unit is None:
                raise InvalidInput(f"{where}: an integer epoch needs --ts-unit s|ms|us|ns")
            return
        if t.startswith(("DateTime", "Date")):
            if ts_unit is not None:
                raise InvalidInput(f"{where}: --ts-unit is for integer epochs only")
            return
        raise InvalidInput(f"{where}: ts must be DateTime, DateTime64, Date or an integer epoch")
    if ours in ("instrument", "granularity"):
        if not t.startswith(("String", "FixedString", "Enum")):
            raise InvalidInput(f"{where}: {ours} must be a String")
        return
    if not t.startswith(_NUMBER) or t.startswith("Interval"):
        raise InvalidInput(f"{where}: {ours} must be a Float, Decimal or Int type")


def _short(exc: BaseException) -> str:
    from ..storage.clickhouse_client import short_error

    text = short_error(exc)
    return text.split("failed: ", 1)[-1]


def check(store: Store, src: Source) -> list[dict]:
    """Per series (instrument, granularity) of a stored granularity: rows,
    first and last ts, and the problems found in ClickHouse: duplicate
    timestamps, malformed candles (high below low, a price outside
    [low, high], a non-finite or non-positive price), times before 1900."""
    base = src.base_sql()
    reader = store.source_reader(src)
    rows = reader.rows(f"""
        SELECT instrument, granularity, count(), toUnixTimestamp64Milli(min(ts)),
               toUnixTimestamp64Milli(max(ts)), count() - uniqExact(ts),
               countIf(NOT (isFinite(open) AND isFinite(high) AND isFinite(low) AND isFinite(close))
                       OR high < low OR open > high OR open < low OR close > high OR close < low
                       OR low <= 0)
        FROM {base} GROUP BY instrument, granularity ORDER BY instrument, granularity""")
    out = []
    for inst, gran, n, lo, hi, dup, bad in rows:
        problems = []
        if dup:
            problems.append(f"{dup} duplicate timestamps")
        if bad:
            problems.append(f"{bad} malformed candles")
        if gran not in GRANULARITIES:
            problems.append(f"unknown granularity {gran!r}")
        out.append({"instrument": inst, "granularity": gran, "candles": int(n), "first": int(lo),
                    "last": int(hi), "problems": problems})
    return out


__all__ = ["check", "define", "parse_maps", "relation_sql"]


class Sources:
    """The registered sources, as the CLI and the service drive them: each
    operation checks the store's schema first (``ready``)."""

    def __init__(self, store: Store, ready: Callable[[], None]):
        self.store, self.ready = store, ready

    def add(self, name: str, relation: str, maps: list[str], **options) -> Source:
        """Check a definition against its relation (``define``) and register
        it; nothing is registered when it fails."""
        self.ready()
        src = define(self.store, name, relation, maps, **options)
        self.store.add_source(src)
        return src

    def all(self) -> list[Source]:
        self.ready()
        return self.store.sources()

    def get(self, name: str) -> Source:
        self.ready()
        return self.store.source(name)

    def check(self, name: str) -> list[dict]:
        """Each series of the source with its problems (``check``)."""
        return check(self.store, self.get(name))

    def remove(self, name: str) -> None:
        """Forget a source; the labels computed from it stay."""
        self.ready()
        self.store.remove_source(name)
