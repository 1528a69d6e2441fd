"""Queueing a job: the counts and bounds its plan needs, read from the
store; the decisions, from ``jobs/plan.py``; the record, into Redis."""

from __future__ import annotations

import difflib
import hashlib
import json
import uuid
from dataclasses import replace
from typing import Any

from ..common import logs
from ..common.granularity import GRANULARITIES
from ..common.times import iso
from ..config import Settings
from ..errors import DependencyError, InvalidInput, InvalidTransition
from ..jobs import plan
from ..jobs.spec import EVER, JobSpec
from ..labels import halo
from ..storage.clickhouse_store import SMALL_SERIES, SeriesKey, Store
from ..storage.redis import RedisState
from . import bars


def chunk_size(settings: Settings, asked: int | None, workers: int, candles: int | None = None) -> int:
    """``plan.chunk_size`` with this deployment's BATCH_CHUNK_SIZE and memory limit."""
    return plan.chunk_size(asked, workers, candles, fixed=settings.chunk_size,
                           memory_limit=settings.memory_limit_bytes)


def backfill(store: Store, state: RedisState, settings: Settings, spec: JobSpec,
             from_first: bool, to_last: bool) -> str:
    """Plan ``spec`` (``plan_backfill``) and queue it; returns its id."""
    return queue(store, state, plan_backfill(store, settings, spec, from_first, to_last))


def plan_backfill(store: Store, settings: Settings, spec: JobSpec, from_first: bool,
                  to_last: bool) -> plan.Planned:
    """``spec`` planned over every series asked for that has candles in its
    range, queueing nothing (``backfill`` queues it; the console's dry run
    shows it).  ``from_first``/``to_last``: the range was left open on that
    side (narrowed to the series' candles).  A ``spec.chunk_size`` of 0 is
    chosen here, from the candles in range.  A ``spec.source`` reads that
    registered source: a granularity it neither stores nor derives is
    refused by name.  Derived series are copied once for the job
    (``engine/bars.py``): the plan names its job id and that copy, which
    is dropped here if planning fails after it was made."""
    job_id = uuid.uuid4().hex[:12]
    copied: list[str] = []  # the copy's table, once made
    try:
        return _plan_backfill(store, settings, spec, from_first, to_last, job_id, copied)
    except BaseException:
        if copied:
            _drop_bars(store, job_id)
        raise


def _drop_bars(store: Store, job_id: str) -> None:
    try:
        bars.drop(store, job_id)
    except DependencyError:
        pass  # ClickHouse away: the reason the caller sees is its own error


def _plan_backfill(store: Store, settings: Settings, spec: JobSpec, from_first: bool,
                   to_last: bool, job_id: str, made: list[str]) -> plan.Planned:
    src = spec.source
    derives: set[str] = set()
    base_g = ""
    if src:
        source = store.source(src)
        for g in spec.granularities:
            source.relation_for(g)
        derives = set(source.derived()) & set(spec.granularities)
        base_g = source.granularity or ""

    def base(k: SeriesKey) -> SeriesKey:
        # A derived bar exists where a candle of the source's base does:
        # whether a derived series exists is asked of the base, from its index.
        return replace(k, granularity=base_g) if k.granularity in derives else k

    if spec.instruments == (plan.ALL,):
        grans = ({g for g in spec.granularities if g not in derives} | ({base_g} if derives else set())
                 if src else None)
        present = {(i, g): n for i, g, n in store.instruments(src, grans)}
        present.update({(i, g): n for (i, b), n in list(present.items()) if b == base_g for g in derives})
    else:  # counted from the index: no scan of the whole candle table
        asked = [SeriesKey(i, g, src) for i, g in spec.series]
        counts = store.range_counts("candles", list(dict.fromkeys(map(base, asked))), *EVER)
        present = {(k.instrument, k.granularity): counts[base(k)] for k in asked if counts[base(k)]}
    wanted = plan.wanted_series(spec, present)
    if spec.instruments != (plan.ALL,):
        _refuse_unknown(store, wanted, present, src)
    keys = [SeriesKey(i, g, src) for i, g in wanted if (i, g) in present]
    back, ahead = halo(spec.resolved)
    # Derived series: aggregated once, into the job's copy of their bars
    # (``engine/bars.py``); counts, bounds and marks come from one read of
    # the copied bars' ts (``bar_times``), cut for every chunk size the plan
    # may choose.  Reading up to the end of time on an open side reads
    # exactly the bars of the narrowed range: each series' bars lie within
    # its own span.
    derived = [k for k in keys if k.granularity in derives]
    sizes = {k: present[(k.instrument, k.granularity)] for k in derived}
    copied: list[SeriesKey] = []
    if derived:
        made.append(bars.table_of(job_id))  # before: a copy that fails half-way is dropped too
        copied = bars.copy(store, job_id, derived, sizes)
        spec = replace(spec, bars=bars.table_of(job_id))
    choices = plan.chunk_size_choices(spec.chunk_size or None, settings.chunk_size)
    counted: dict[SeriesKey, tuple[int, int, int, dict[int, dict[int, int]]]] = {}
    for k, ts in store.bar_times(copied, EVER[0] if from_first else spec.start_ms,
                                 EVER[1] if to_last else spec.end_ms, sizes):
        counted[k] = (len(ts), int(ts[0]), int(ts[-1]), {cs: plan.marks_of(ts, cs, back, ahead)
                                                         for cs in choices})
    derived_set = set(derived)
    keys = [k for k in keys if k not in derived_set]
    # Small series are counted and bounded in batches; the others, one by one from the index.
    sizes = {k: present[(k.instrument, k.granularity)] for k in keys}
    small = {k for k in keys if 0 < sizes[k] <= SMALL_SERIES}
    large = [k for k in keys if k not in small]
    if from_first or to_last:
        spans = [(lo, hi) for _, lo, hi in store.small_series_counts(keys, *EVER, sizes).values()]
        spans += [(lo, hi) for _, lo, hi, _ in counted.values()]
        spec = plan.narrow(spec, spans + list(store.series_spans(large).values()), from_first, to_last)
    got = store.small_series_counts(keys, spec.start_ms, spec.end_ms, sizes)
    in_range = {**{k: got[k][0] if k in got else 0 for k in small},
                **store.range_counts("candles", large, spec.start_ms, spec.end_ms)}
    in_range = {**{k: in_range[k] for k in keys}, **{k: b[0] for k, b in counted.items()}}
    spec = replace(spec, chunk_size=chunk_size(settings, spec.chunk_size or None, spec.workers,
                                               sum(in_range.values())))
    marks = store.chunk_marks(keys, spec.start_ms, spec.end_ms, spec.chunk_size, back, ahead, in_range,
                              {k: got[k][1] for k in small if k in got and got[k][0]})
    marks.update({k: b[3][spec.chunk_size] for k, b in counted.items()})
    runs = {(k.instrument, k.granularity): plan.series_runs(in_range[k], marks[k], spec.chunk_size,
                                                            back, ahead, spec.end_ms) for k in marks}
    planned = plan.backfill(spec, wanted, runs, job_id)
    if planned is None:
        why = plan.no_candles(spec, wanted)
        if len(wanted) == 1:
            _, first, last = store.series_summary(SeriesKey(*wanted[0], src))
            why += f"; the series has {iso(first)} to {iso(last)}"
        raise InvalidInput(why)
    return planned


def _refuse_unknown(store: Store, wanted: list[tuple[str, str]], present: dict, source: str) -> None:
    """An error naming the series asked for that have no candles at all:
    a lone series without them, or an instrument without a candle at any
    granularity.  A pair whose instrument has candles at another
    granularity is skipped by the caller: a universe may be sparse."""
    absent = [k for k in wanted if k not in present]
    if not absent:
        return
    if len(wanted) > 1:
        insts = {i for i, _ in absent} - {i for i, _ in present}
        grans = ([g for g in GRANULARITIES if store.source(source).serves(g)] if source
                 else list(GRANULARITIES))
        anywhere = store.range_counts(
            "candles", [SeriesKey(i, g, source) for i in sorted(insts) for g in grans], *EVER)
        insts -= {k.instrument for k, n in anywhere.items() if n}
        absent = [k for k in absent if k[0] in insts]
        if not absent:
            return
    stored = [f"{i} {g}" for i, g, _ in store.instruments(source)]
    near = list(dict.fromkeys(m for i, g in absent
                              for m in difflib.get_close_matches(f"{i} {g}", stored, n=5)))[:5]
    hint = (f"similar: {', '.join(near)}" if near
            else f"the store has {len(stored)} series: see `gpubackfill series`" if stored
            else "the store has no candles yet")
    where = f"source {source}" if source else "the store"
    raise InvalidInput(f"no candles for {', '.join(f'{i} {g}' for i, g in absent)} in {where} "
                       f"(ingest some first; {hint})")


def preview(store: Store, settings: Settings, spec: JobSpec, from_first: bool, to_last: bool
            ) -> dict[str, Any]:
    """What ``backfill`` would queue, queueing nothing (the console's dry
    run): series, skipped, chunks, candles, the label set and whether it
    exists already."""
    planned = plan_backfill(store, settings, spec, from_first, to_last)
    _drop_bars(store, planned.job_id)  # nothing runs it
    spec, chunks = planned.spec, planned.chunks
    exists = store.rows(f"SELECT count() FROM {store.db}.label_sets WHERE label_set = {{s:String}}",
                        {"s": spec.label_set})[0][0] > 0
    return {"series": [f"{i} {g}" for i, g in spec.series], "skipped": planned.skipped,
            "chunks": len(chunks), "candles": sum(seg.rows for chunk in chunks for seg in chunk),
            "label_set": spec.label_set, "label_set_exists": exists, "start": iso(spec.start_ms),
            "end": iso(spec.end_ms), "chunk_size": spec.chunk_size}


def update(store: Store, state: RedisState, settings: Settings, insts: set[str] | None,
           grans: set[str] | None, asked: int | None, workers: int, priority: str,
           backend: str, source: str = "") -> list[dict[str, Any]]:
    """Queue the daily update (``coverage.update_plans``): one job per label
    set with stale or missing chunks on the series selected (of ``source``)."""
    from ..storage import coverage

    size = chunk_size(settings, asked, workers)
    out = []
    for p in coverage.update_plans(store, size, insts, grans, source):
        spec = replace(plan.update_spec(p, size, workers, priority, backend), source=source)
        out.append({"job_id": queue(store, state, plan.Planned(spec, p.chunks, [])),
                    "label_set": p.set_id, "series": len(p.series), "stale_chunks": p.stale,
                    "new_chunks": p.new, "chunks": len(p.chunks)})
    return out


def queue(store: Store, state: RedisState, planned: plan.Planned) -> str:
    try:
        return _queue(store, state, planned)
    except BaseException:
        if planned.spec.bars:
            _drop_bars(store, planned.job_id)  # no job will run with it
        raise


def _queue(store: Store, state: RedisState, planned: plan.Planned) -> str:
    spec, chunks = planned.spec, planned.chunks
    store.ensure_label_table(list(spec.resolved))
    job_id = planned.job_id or uuid.uuid4().hex[:12]
    # One active job per series set, range and label set: a second
    # identical start (a double click, a retried deploy) must not do the
    # work twice.
    digest = hashlib.blake2b(json.dumps([sorted(spec.series), spec.start_ms, spec.end_ms,
                                         spec.label_set, spec.kind]
                                        + ([spec.source] if spec.source else [])).encode(),
                             digest_size=10).hexdigest()
    other = state.claim_spec(digest, job_id)
    if other is not None:
        raise InvalidTransition(f"an identical job {other[0]} is already {other[1]}: follow it "
                                f"with `gpubackfill monitor {other[0]}`")
    state.create_job(job_id, {**spec.to_record(), "spec_key": state.spec_key(digest),
                              "skipped": planned.skipped}, chunks)
    logs.job_event(job_id, "queued", "create", f"{len(chunks)} chunks",
                   instrument=spec.instrument, granularity=spec.granularity, priority=spec.priority)
    return job_id
