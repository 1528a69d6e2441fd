"""A window of a series for the console's chart: candles, downsampled by
ClickHouse to at most ``MAX_POINTS`` buckets, and, when the window is small
enough to draw every bar, the label set's rows for those bars (read with
``BackfillService.export``, the same reader as ``gpubackfill export``) and
each bar's triple-barrier levels.  Sigma is not stored: the levels are
computed here from the window's candles and the look-back before it, by the
label's own code (``triple_barrier.levels``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...common.granularity import parse_granularity, parse_instrument
from ...compute.backends import select
from ...errors import InvalidInput
from ...jobs.spec import parse_time
from ...labels import triple_barrier
from ...labels.volatility import sigma_lookback
from ...storage.clickhouse_store import SeriesKey

if TYPE_CHECKING:
    from ...service import BackfillService

MAX_POINTS = 2_000   # drawn at once; a wider window is bucketed by ClickHouse
TB_COLUMNS = ("tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return", "tb_flags")
TB = triple_barrier.SPEC.name


def _finite(v: float) -> float | None:
    return v if v == v else None   # NaN -> null in JSON


def levels(service: BackfillService, key: SeriesKey, lo: int, hi: int, p: dict[str, Any]) -> dict[str, Any]:
    """The triple barrier's levels of every bar in [lo, hi): ``rows`` of
    [ts, upper, lower, ts of the vertical barrier (null past the data), sigma]."""
    p = triple_barrier.SPEC.resolve(p)
    horizon = int(p["horizon"])
    table, first, n = service.store.load(key, lo, hi, sigma_lookback(p), horizon)
    ts = table.column("ts").to_numpy()
    sigma, upper, lower = triple_barrier.levels(select("cpu").kernels, table.column("close").to_numpy(), p)
    rows = []
    for i in range(first, first + n):
        j = i + horizon
        rows.append([int(ts[i]), _finite(float(upper[i])), _finite(float(lower[i])),
                     int(ts[j]) if j < len(ts) else None, _finite(float(sigma[i]))])
    return {"pt": p["pt"], "sl": p["sl"], "horizon": horizon, "vol": p["vol"], "vol_span": p["vol_span"],
            "sided": p["side"] == "column", "rows": rows}


def _ms(value: str | None, what: str, end: bool) -> int | None:
    return parse_time(value, what, end) if value else None


def window(service: BackfillService, instrument: str, granularity: str, set_id: str | None,
           start: str | None, end: str | None, source: str | None = None) -> dict[str, Any]:
    """The chart's data for a window of a series (of ``source``: None or ''
    for the built-in table), read where its candles are."""
    key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity), service.source_name(source))
    n, first, last = service.store.series_summary(key)
    if not n or first is None or last is None:
        where = f"source {key.source}" if key.source else "the store"
        raise InvalidInput(f"no {key.instrument} {key.granularity} candles in {where}")
    lo = _ms(start, "from", False) or first
    hi = _ms(end, "to", True) or last + 1
    if hi <= lo:
        raise InvalidInput("'to' must come after 'from'")
    count, bucket, rows = service.store.chart_bars(key, lo, hi, MAX_POINTS)
    out: dict[str, Any] = {
        "instrument": key.instrument, "granularity": key.granularity, "source": key.source,
        "from_ms": lo, "to_ms": hi,
        "first_ms": first, "last_ms": last + 1, "bars": count, "bucket_ms": bucket,
        "candles": [[int(t), float(o), float(h), float(lw), float(c)] for t, o, h, lw, c in rows],
        "set": set_id or "", "labels": [], "lines": {}, "levels": None, "note": ""}
    if not set_id:
        return out
    if bucket:
        out["note"] = (f"{count:,} bars in view, drawn as {len(rows):,} buckets: zoom in to "
                       f"{MAX_POINTS:,} bars or fewer to see each bar's barriers")
        return out
    try:
        table = service.export(key.instrument, key.granularity, set_id=set_id,
                               start=datetime.fromtimestamp(lo / 1000, UTC),
                               end=datetime.fromtimestamp((hi - 1) / 1000, UTC), source=key.source or None)
    except InvalidInput as exc:
        out["note"] = str(exc)
        return out
    cols = table.to_pydict()
    ts = cols.pop("ts")
    if "tb_label" in cols:
        out["labels"] = [[int(t), *(cols[c][i] for c in TB_COLUMNS)] for i, t in enumerate(ts)]
        sets = {s.set_id: s for s in service.label_sets(key.instrument, key.granularity,
                                                         source=key.source or None)}
        if set_id in sets and TB in sets[set_id].params and count:
            out["levels"] = levels(service, key, lo, hi, sets[set_id].params[TB])
    for name, values in cols.items():
        if name in TB_COLUMNS or name in ("open", "high", "low", "close", "volume"):
            continue
        if values and all(v is None or isinstance(v, int | float) for v in values):
            out["lines"][name] = [[int(t), v] for t, v in zip(ts, values)]
    return out
