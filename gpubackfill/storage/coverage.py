"""What each series' labels cover, and what the daily update must recompute.

Read from the store's manifest (``label_chunks``: one row per computed
chunk range, with its incomplete rows and when it was computed) and its
ingest log (``candle_changes``).  A computed chunk is **stale** when its
labels may no longer match the candles: an ingest after it was computed
changed a candle inside its range or within its look-back/look-ahead (the
label set's halo, counted in candles of the series, so weekends and gaps
are measured exactly: ``Store.halo_windows``).  That covers the incomplete
tail (labels left NULL for lack of future candles): the ingest that
appends newer candles is a change within its look-ahead.

Candles after the last computed range are **missing**.  An update plans
exactly those ranges, with the computed chunks' own boundaries, so an
unchanged stale chunk is a cheap cache hit (its input fingerprint matches)
and a changed one replaces its rows in place.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..jobs import plan
from ..jobs.plan import Computed as Record
from ..jobs.plan import UpdatePlan
from ..labels import halo, resolve
from .clickhouse_store import SeriesKey, Store


@dataclass
class SetCoverage:
    set_id: str
    labels: list[str]
    rows: int                 # label rows written
    incomplete: int           # rows NULL because the data ends
    chunks: int
    stale_chunks: int         # changed inputs or incomplete tail
    first_ms: int
    last_ms: int              # end (exclusive) of the last computed range
    behind: bool              # candles exist after last_ms


@dataclass
class SeriesCoverage:
    instrument: str
    granularity: str
    candles: int
    first_ms: int
    last_ms: int
    sets: list[SetCoverage] = field(default_factory=list)


def _selected(key: tuple[str, str], insts: set[str] | None, grans: set[str] | None) -> bool:
    return (insts is None or key[0] in insts) and (grans is None or key[1] in grans)


def _stale_flags(store: Store, sets: dict, records: dict, changes: dict) -> dict:
    """(set id, series) -> one flag per record (in ``records`` order): stale
    or not (``plan.stale_flags``), with each later change's reach read from
    the store (``Store.halo_windows``)."""
    asks, where = [], []
    for (set_id, key), recs in records.items():
        if set_id not in sets:
            continue
        oldest = min(r.computed_ms for r in recs)
        back, ahead = halo(resolve(list(sets[set_id]), sets[set_id]))
        for first, last, at in changes.get(key, []):
            if at > oldest:
                asks.append((SeriesKey(*key), first, last, back, ahead))
                where.append(((set_id, key), at))
    reach: dict = defaultdict(list)
    for (k, at), window in zip(where, store.halo_windows(asks)):
        reach[k].append((at, window))
    return {k: plan.stale_flags(v, reach.get(k, [])) for k, v in records.items()}


def _state(store: Store):
    series = {(i, g): (n, lo, hi) for i, g, n, lo, hi in store.series_table()}
    records: dict[tuple[str, tuple[str, str]], list[Record]] = defaultdict(list)
    for i, g, s, a, b, rows, inc, at in store.manifest():
        records[(s, (i, g))].append(Record(a, b, rows, inc, at))
    changes: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    for i, g, first, last, at in store.changes():
        changes[(i, g)].append((first, last, at))
    return series, records, changes


def overview(store: Store, insts: set[str] | None = None,
             grans: set[str] | None = None) -> list[SeriesCoverage]:
    """Every series in the store (or those asked for) with its coverage."""
    series, records, changes = _state(store)
    sets = {set_id: params for set_id, params, _ in store.label_set_registry()}
    out = {k: SeriesCoverage(k[0], k[1], n, lo, hi) for k, (n, lo, hi) in sorted(series.items())
           if _selected(k, insts, grans)}
    chosen = {k: v for k, v in records.items() if k[1] in out}
    flags = _stale_flags(store, sets, chosen, changes)
    for (set_id, key), recs in sorted(chosen.items()):
        if set_id not in sets:
            continue
        last = max(r.end_ms for r in recs)
        out[key].sets.append(SetCoverage(
            set_id, list(sets[set_id]), sum(r.rows for r in recs), sum(r.incomplete for r in recs),
            len(recs), sum(flags[(set_id, key)]), min(r.start_ms for r in recs), last,
            out[key].last_ms >= last))
    return list(out.values())


def update_plans(store: Store, chunk_size: int, insts: set[str] | None = None,
                 grans: set[str] | None = None) -> list[UpdatePlan]:
    """Per label set computed on the selected series: the stale chunks and
    the missing tail, planned as one job's chunks ([] when all is current)."""
    series, records, changes = _state(store)
    sets = {set_id: params for set_id, params, _ in store.label_set_registry()}
    chosen = {k: v for k, v in records.items()
              if k[0] in sets and k[1] in series and _selected(k[1], insts, grans)}
    flags = _stale_flags(store, sets, chosen, changes)
    by_set: dict[str, list] = defaultdict(list)
    for (set_id, key), recs in sorted(chosen.items()):
        tail = plan.update_tail(recs, series[key][2])
        fresh = (plan.plan_chunks(store.chunk_starts(SeriesKey(*key), *tail, chunk_size), tail[1])
                 if tail else [])
        by_set[set_id].append((key, recs, flags[(set_id, key)], fresh))
    planned = (plan.update(set_id, sets[set_id], members, chunk_size) for set_id, members in by_set.items())
    return [p for p in planned if p is not None]
