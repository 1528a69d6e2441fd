"""A source: a ClickHouse relation that holds candles, and how to read it.

The relation is read through one subquery that has the built-in
``candles`` table's columns (instrument, granularity, ts as
``DateTime64(3, 'UTC')``, open..volume as Float64, side as a nullable
number), so every candle query of the store runs unchanged over it; the
conversions happen in ClickHouse.
A source with one fixed granularity serves every coarser granularity whose
bar is a whole number of its bars, aggregated at read time (``derived``);
a derived bar's side is its last stored bar's (the position held at its close).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..common.granularity import DAY_MS, GRANULARITIES
from ..errors import InvalidInput
from .sql import filtered, ident, literal, relation_sql

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
OURS = ("instrument", "ts", "open", "high", "low", "close", "volume", "granularity", "side")
REQUIRED = ("instrument", "ts", "open", "high", "low", "close")
# An integer epoch in each unit as whole milliseconds (microseconds and
# nanoseconds truncated toward zero), by functions ClickHouse knows to be
# monotonic, so that a range on ts reaches a sort key on the raw column
# (fromUnixTimestamp64Milli and a product are opaque to its key analysis).
# Seconds are one CAST, which an ORDER BY ts LIMIT n also reads in key
# order; the finer units' chain is not read in order (ClickHouse 26.9).
TS_UNITS = {"s": "{c}", "ms": "{c}", "us": "intDiv({c}, 1000)", "ns": "intDiv({c}, 1000000)"}
# Milliseconds before 1970 back to 1900-01-01, DateTime64's first day: the
# float seconds a CAST reads are positive, and a half millisecond up from
# the integer, so its truncation lands on it exactly (a float's error here
# is under a microsecond up to the year 2229).
_EPOCH_SHIFT = 2_208_988_800_000
_DAY_START = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid source name {name!r}: 1-64 characters of A-Z, a-z, 0-9, "
                           f"'_', '.', '-'")
    return name


def base_type(t: str) -> str:
    """A ClickHouse type without Nullable/LowCardinality around it."""
    while True:
        m = re.fullmatch(r"(?:Nullable|LowCardinality)\((.*)\)", t.strip())
        if not m:
            return t.strip()
        t = m.group(1)


def _zone(t: str) -> str | None:
    m = re.search(r"'([^']*)'\)$", t)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Source:
    """A source's definition as kept in the store's ``sources`` table.

    ``columns``: ours -> theirs; ``types``: theirs' ClickHouse types, read
    when the source was added; ``granularity``: the one granularity of every
    row, or None where ``columns`` maps one; ``stored``: the granularities it
    holds (its ``granularity``, or the values of the mapped column)."""

    name: str
    relation: str
    columns: dict[str, str]
    types: dict[str, str] = field(default_factory=dict)
    granularity: str | None = None
    stored: tuple[str, ...] = ()
    ts_unit: str | None = None
    tz: str | None = None
    where: str | None = None
    clickhouse_url: str | None = None
    day_start: str = "00:00"
    day_tz: str = "UTC"

    # -- record ------------------------------------------------------------

    def to_json(self) -> str:
        out = asdict(self)
        out["stored"] = list(self.stored)
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Source:
        d: dict[str, Any] = json.loads(text)
        d["stored"] = tuple(d.get("stored") or ())
        return cls(**d)

    # -- granularities -------------------------------------------------------

    def derived(self) -> tuple[str, ...]:
        """The granularities aggregated at read time from the stored one."""
        if self.granularity is None:
            return ()
        bar = GRANULARITIES[self.granularity]
        return tuple(g for g, ms in GRANULARITIES.items()
                     if ms > bar and ms % bar == 0 and g not in self.stored
                     and (ms < DAY_MS or DAY_MS % bar == 0))

    def serves(self, granularity: str) -> bool:
        return granularity in self.stored or granularity in self.derived()

    # -- SQL -----------------------------------------------------------------

    def base_sql(self) -> str:
        """The source's rows with our columns and types, as a subquery."""
        c = {ours: f"src.{ident(theirs)}" for ours, theirs in self.columns.items()}
        gran = (f"toString({c['granularity']})" if "granularity" in c
                else literal(self.granularity or ""))
        prices = [f"ifNull(toFloat64({c[p]}), nan) AS {p}" for p in ("open", "high", "low", "close")]
        volume = f"ifNull(toFloat64({c['volume']}), 0)" if "volume" in c else "toFloat64(0)"
        side = f"toNullable(toFloat64({c['side']}))" if "side" in c else "CAST(NULL, 'Nullable(Float64)')"
        return (f"(SELECT toString({c['instrument']}) AS instrument, {gran} AS granularity, "
                f"{self.ts_sql(c['ts'])} AS ts, {', '.join(prices)}, {volume} AS volume, {side} AS side "
                f"FROM {filtered(relation_sql(self.relation), self.where)} AS src)")

    def ts_sql(self, col: str) -> str:
        """``col`` (of its recorded type) as DateTime64(3, 'UTC')."""
        t = base_type(self.types.get(self.columns["ts"], "DateTime"))
        if t.startswith(("Int", "UInt")):
            unit = self.ts_unit or "s"
            if unit == "s":  # a CAST reads an integer as seconds, exactly
                return f"CAST({col}, 'DateTime64(3, \\'UTC\\')')"
            ms = TS_UNITS[unit].format(c=col)
            return (f"CAST(({ms} + {_EPOCH_SHIFT + 0.5}) / 1000, 'DateTime64(3, \\'UTC\\')') "
                    f"- toIntervalMillisecond({_EPOCH_SHIFT})")
        if t.startswith("Date") and not t.startswith("DateTime"):
            return f"toDateTime64(toDateTime({col}, {literal(self.tz or 'UTC')}), 3, 'UTC')"
        if self.tz and _zone(t) is None:
            # Wall-clock times of a zone the column does not name: read them there.
            scale = re.match(r"DateTime64\((\d+)", t)
            p = scale.group(1) if scale else "0"
            return f"toDateTime64(toDateTime64(toString({col}), {p}, {literal(self.tz)}), 3, 'UTC')"
        # A CAST, not toDateTime64(col, 3, 'UTC'): ClickHouse reads a CAST's
        # ranges and order from the table's sort key (a chunk's range read
        # and its halo's ORDER BY ts LIMIT n read their granules, not the
        # whole series), and it does not see through toDateTime64 with a zone.
        return f"CAST({col}, 'DateTime64(3, \\'UTC\\')')"

    def relation_for(self, granularity: str) -> str:
        """The subquery that holds this source's ``granularity`` bars."""
        if granularity in self.stored or self.granularity is None:
            return self.base_sql()
        if granularity not in self.derived():
            raise InvalidInput(f"source {self.name} has no {granularity} candles: it stores "
                               f"{','.join(self.stored) or 'none'} and derives "
                               f"{','.join(self.derived()) or 'none'}")
        bar = GRANULARITIES[granularity]
        if bar < DAY_MS:
            # Buckets of whole milliseconds from the epoch, by a function
            # ClickHouse knows to be monotonic: a range on a derived bar's
            # ts is pushed below the GROUP BY onto the source's time column
            # and its sort key (a chunk aggregates its own granules, not the
            # whole series), and the GROUP BY can run in the key's order.
            key, start = f"toStartOfInterval(ts, toIntervalMillisecond({bar}))", "b_key"
        else:
            # The trading day a bar belongs to: its local date, or the day
            # before where it falls before the day's start on the wall clock.
            h, m = (int(x) for x in self.day_start.split(":"))
            tz = literal(self.day_tz)
            local = f"toTimeZone(ts, {tz})"
            day = (f"if(toHour({local}) * 60 + toMinute({local}) >= {h * 60 + m}, "
                   f"toDate({local}), toDate({local}) - 1)")
            if bar > DAY_MS:  # weeks of trading days, aligned as stored W1 bars (to 1970-01-01)
                n = f"toInt64({day})"
                day = f"toDate({n} - ((({n}) % 7) + 7) % 7)"
            key = day
            start = (f"toDateTime64(toDateTime64(concat(toString(b_key), ' {h:02d}:{m:02d}:00'), 3, "
                     f"{tz}), 3, 'UTC')")
        return (f"(SELECT instrument, {literal(granularity)} AS granularity, "
                f"{start} AS ts, "
                f"b_open AS open, b_high AS high, b_low AS low, b_close AS close, b_volume AS volume, "
                f"b_side.1 AS side "
                f"FROM (SELECT instrument, {key} AS b_key, argMin(open, ts) AS b_open, "
                f"max(high) AS b_high, min(low) AS b_low, argMax(close, ts) AS b_close, "
                # In a tuple: argMax would skip a NULL side, not take it.
                f"{ORDER_FREE_SUM} AS b_volume, argMax(tuple(side), ts) AS b_side FROM {self.base_sql()} "
                f"WHERE granularity = {literal(self.granularity)} GROUP BY instrument, b_key))")


# A bar's volume: its candles' volumes added in ascending order of value.
# sum() adds in the order rows reach its threads, and a read of the whole
# series splits them differently from a read of a window of it: Float64
# sums then differ in the last bit (80 of 50k H1 bars from random M1
# volumes, 3M rows), so a chunk's print, from a job's copy of the bars, would
# not match what ``update`` recomputes over a window.  Sorted, the same
# candles give the same sum whatever the read (by value, not ts: one array,
# about half the cost; H1 from 10M M1: 0.8 CPU-s against 0.5 for sum(), 1.4
# sorted by ts).  sumKahan's merge is not order-free either (16k of 200k).
ORDER_FREE_SUM = "arraySum(arraySort(groupArray(volume)))"


def parse_day_start(text: str) -> str:
    if not _DAY_START.match(text or ""):
        raise InvalidInput(f"--day-start {text!r}: use HH:MM (00:00..23:59)")
    return text
