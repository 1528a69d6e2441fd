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

A source has no ingest log: there a chunk is stale when ClickHouse's
print of its input window (``sources.fingerprint``) no longer matches the
one recorded with it, asked in one grouped query per series.

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
from ..labels import finer_candles, halo, resolve
from ..sources import fingerprint
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


def _print_flags(store: Store, sets: dict, records: dict, source: str) -> dict:
    """(set id, series) -> one stale flag per record of a source's series:
    its input print (and that of the finer candles its labels read) as
    ClickHouse computes it now differs from the recorded one, or there is
    none.  One ``Store.window_prints`` per series, every set's windows in it."""
    recorded = store.chunk_prints(source)
    found: dict = {}
    wanted: dict[SeriesKey, set[tuple[int, int]]] = defaultdict(set)
    for (set_id, key), recs in records.items():
        if set_id not in sets:
            continue
        need = finer_candles(resolve(list(sets[set_id]), sets[set_id]))
        finer = SeriesKey(key[0], need.granularity, source) if need else None
        for r in recs:
            p = fingerprint.parse(recorded.get((set_id, *key, r.start_ms, r.end_ms), ""))
            found[(set_id, key, r.start_ms, r.end_ms)] = (p, finer)
            if p is not None:
                wanted[SeriesKey(key[0], key[1], source)].add(p[0])
                if p[2] is not None and finer is not None:
                    wanted[finer].add(p[2][:2])
    now = {}
    for k, windows in wanted.items():
        ordered = sorted(windows)
        now.update({(k, w): st for w, st in zip(ordered, store.window_prints(k, ordered))})

    def stale(set_id: str, key: tuple[str, str], r: Record) -> bool:
        p, finer = found[(set_id, key, r.start_ms, r.end_ms)]
        if p is None or now[(SeriesKey(key[0], key[1], source), p[0])] != p[1]:
            return True
        if (p[2] is None) != (finer is None):
            return True
        return p[2] is not None and now[(finer, p[2][:2])] != p[2][2]
    return {(set_id, key): [stale(set_id, key, r) for r in recs] for (set_id, key), recs in records.items()
            if set_id in sets}


def _flags(store: Store, sets: dict, records: dict, changes: dict, source: str) -> dict:
    return _print_flags(store, sets, records, source) if source else _stale_flags(store, sets, records, changes)


def _records(store: Store, source: str = "") -> dict[tuple[str, tuple[str, str]], list[Record]]:
    """(set id, series) -> the manifest's records of a source's series."""
    records: dict[tuple[str, tuple[str, str]], list[Record]] = defaultdict(list)
    for i, g, s, a, b, rows, inc, at in store.manifest(source):
        records[(s, (i, g))].append(Record(a, b, rows, inc, at))
    return records


def _state(store: Store, source: str = ""):
    """(series: key -> (candles, first, last), the manifest's records, the
    ingest log).  Of a source, every series it stores or derives is counted
    (a derived one by aggregating the base)."""
    records = _records(store, source)
    if source:
        counts = {(i, g): n for i, g, n in store.instruments(source)}
        spans = store.series_spans([SeriesKey(i, g, source) for i, g in counts])
        series = {(k.instrument, k.granularity): (counts[(k.instrument, k.granularity)], lo, hi)
                  for k, (lo, hi) in spans.items()}
    else:
        series = {(i, g): (n, lo, hi) for i, g, n, lo, hi in store.series_table()}
    changes: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    for i, g, first, last, at in ([] if source else store.changes()):
        changes[(i, g)].append((first, last, at))
    return series, records, changes


def overview(store: Store, insts: set[str] | None = None,
             grans: set[str] | None = None, source: str = "") -> list[SeriesCoverage]:
    """Every series in the store (or those asked for; of ``source``: that
    source's) with its coverage."""
    series, records, changes = _state(store, source)
    sets = {set_id: params for set_id, params, _ in store.label_set_registry()}
    out = {k: SeriesCoverage(k[0], k[1], n, lo, hi) for k, (n, lo, hi) in sorted(series.items())
           if _selected(k, insts, grans)}
    chosen = {k: v for k, v in records.items() if k[1] in out}
    flags = _flags(store, sets, chosen, changes, source)
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
                 grans: set[str] | None = None, source: str = "") -> list[UpdatePlan]:
    """Per label set computed on the selected series (of ``source``): the
    stale chunks and the missing tail, planned as one job's chunks ([] when
    all is current)."""
    if source:
        # Only each selected labelled series' last candle is needed: two
        # key-ordered reads of one row each (``series_spans``), not a count
        # of the whole source (a full read, 30% of an update's time at 10M).
        records = _records(store, source)
        changes: dict = {}
        asked = sorted({key for _, key in records if _selected(key, insts, grans)})
        last = {(k.instrument, k.granularity): hi for k, (_, hi) in
                store.series_spans([SeriesKey(i, g, source) for i, g in asked]).items()}
    else:
        series, records, changes = _state(store)
        last = {k: hi for k, (_, _, hi) in series.items()}
    sets = {set_id: params for set_id, params, _ in store.label_set_registry()}
    chosen = {k: v for k, v in records.items()
              if k[0] in sets and k[1] in last and _selected(k[1], insts, grans)}
    flags = _flags(store, sets, chosen, changes, source)
    by_set: dict[str, list] = defaultdict(list)
    for (set_id, key), recs in sorted(chosen.items()):
        tail = plan.update_tail(recs, last[key])
        fresh = (plan.plan_chunks(store.chunk_starts(SeriesKey(key[0], key[1], source), *tail, chunk_size), tail[1])
                 if tail else [])
        by_set[set_id].append((key, recs, flags[(set_id, key)], fresh))
    planned = (plan.update(set_id, sets[set_id], members, chunk_size) for set_id, members in by_set.items())
    return [p for p in planned if p is not None]
