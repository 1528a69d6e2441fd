"""A window of a series for the console's chart: candles, downsampled by
ClickHouse to at most ``MAX_POINTS`` buckets, and, when the window is small
enough to draw every bar, the label set's rows for those bars (read with
``BackfillService.export``, the same reader as ``gpubackfill export``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...errors import InvalidInput
from ...granularity import parse_granularity, parse_instrument
from ...jobs.plan import parse_time
from ...storage.clickhouse_store import SeriesKey

if TYPE_CHECKING:
    from ...service import BackfillService

MAX_POINTS = 2_000   # drawn at once; a wider window is bucketed by ClickHouse
TB_COLUMNS = ("tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return", "tb_flags")


def _ms(value: str | None, what: str, end: bool) -> int | None:
    return parse_time(value, what, end) if value else None


def window(service: BackfillService, instrument: str, granularity: str, set_id: str | None,
           start: str | None, end: str | None) -> dict[str, Any]:
    key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity))
    n, first, last = service.store.series_summary(key)
    if not n or first is None or last is None:
        raise InvalidInput(f"no {key.instrument} {key.granularity} candles in the store")
    lo = _ms(start, "from", False) or first
    hi = _ms(end, "to", True) or last + 1
    if hi <= lo:
        raise InvalidInput("'to' must come after 'from'")
    db, p = service.store.db, {"i": key.instrument, "g": key.granularity, "lo": lo, "hi": hi}
    where = ("instrument = {i:String} AND granularity = {g:String} AND ts >= fromUnixTimestamp64Milli({lo:Int64}) "
             "AND ts < fromUnixTimestamp64Milli({hi:Int64})")
    (count,) = service.store.rows(f"SELECT count() FROM {db}.candles WHERE {where}", p)[0]
    count = int(count)
    bucket = 0
    if count > MAX_POINTS:
        # Buckets of equal time: a gap (a weekend) stays a gap.
        bucket = -(-(hi - lo) // MAX_POINTS)
        rows = service.store.rows(
            f"SELECT min(toUnixTimestamp64Milli(ts)), argMin(open, ts), max(high), min(low), argMax(close, ts) "
            f"FROM {db}.candles WHERE {where} "
            f"GROUP BY intDiv(toUnixTimestamp64Milli(ts) - {{lo:Int64}}, {{b:Int64}}) ORDER BY 1", {**p, "b": bucket})
    else:
        rows = service.store.rows(
            f"SELECT toUnixTimestamp64Milli(ts), open, high, low, close FROM {db}.candles WHERE {where} ORDER BY ts", p)
    out: dict[str, Any] = {
        "instrument": key.instrument, "granularity": key.granularity, "from_ms": lo, "to_ms": hi,
        "first_ms": first, "last_ms": last + 1, "bars": count, "bucket_ms": bucket,
        "candles": [[int(t), float(o), float(h), float(lw), float(c)] for t, o, h, lw, c in rows],
        "set": set_id or "", "labels": [], "lines": {}, "note": ""}
    if not set_id:
        return out
    if bucket:
        out["note"] = (f"{count:,} bars in view, drawn as {len(rows):,} buckets: zoom in to "
                       f"{MAX_POINTS:,} bars or fewer to see each bar's barriers")
        return out
    try:
        table = service.export(key.instrument, key.granularity, set_id=set_id,
                               start=datetime.fromtimestamp(lo / 1000, UTC),
                               end=datetime.fromtimestamp((hi - 1) / 1000, UTC))
    except InvalidInput as exc:
        out["note"] = str(exc)
        return out
    cols = table.to_pydict()
    ts = cols.pop("ts")
    if "tb_label" in cols:
        out["labels"] = [[int(t), *(cols[c][i] for c in TB_COLUMNS)] for i, t in enumerate(ts)]
    for name, values in cols.items():
        if name in TB_COLUMNS or name in ("open", "high", "low", "close", "volume"):
            continue
        if values and all(v is None or isinstance(v, int | float) for v in values):
            out["lines"][name] = [[int(t), v] for t, v in zip(ts, values)]
    return out
