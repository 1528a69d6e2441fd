"""Sources, measured (issue 23's "Speed"): one table, every figure from the
same run, on the embedded default (chDB in process + the bundled
redis-server) in a fresh temporary ``GPUBACKFILL_HOME`` deleted at the end.

Setup: ``--candles`` M1 candles of BTCUSD (24/7), prices exact in Float32,
written twice: ingested into the built-in ``candles`` table, and into a
team's own table ``market.ohlc_m1``-style: renamed columns, Float32 prices,
``DateTime('America/New_York')``, a Nullable volume (every 7th NULL: read
as 0, so the built-in copy has 0 there), an extra column, rows inserted in
random order in several parts, ``ORDER BY (symbol, time)`` as such a table
is kept.  Both tables are merged (``OPTIMIZE ... FINAL``) before timing.

(a) A default backfill (all three default labels, default chunk size and
    workers; ``create_job`` + ``execute``, what ``start`` waits for) read
    from the source, against the same job over the built-in table, run in
    alternation ``--rounds`` times (label tables emptied before each job):
    best of each, and their ratio (target >= 90%).  The two jobs' labels
    are compared (count and an order-independent hash of every column).
(c) ``update --source`` over that series with nothing changed
    (``plan_update``: coverage, one grouped window-print query, no job),
    against the source backfill's time (target <= 20%); the window-print
    query alone and what chDB says it read from storage are shown too.
(b) A job over H1 derived from the source's M1 (aggregated in ClickHouse at
    read time) against its floor: chDB alone running the same aggregating
    read (one statement, the whole series) and inserting the same label
    rows (one statement, rows prepared before the clock), each timed alone
    on the raw connection, best of two; the job best of ``--rounds``
    (target: the job >= 75% of the floor's speed).  The floor's read with
    a plain ``sum()`` of volumes (order-dependent in its last bit, as the
    engine read before) is shown beside it.

Run from the repository root::

    python bench/sources_speed.py                    # 1M candles
    python bench/sources_speed.py --candles 10000000 # the issue's figure
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import report as _report  # bench/report.py: a script's own folder is first on sys.path

import gpubackfill
from gpubackfill.config import Settings
from gpubackfill.labels import DEFAULT_LABELS, label_set_id, resolve

INSTRUMENT = "BTCUSD"
STEP_MS = 60_000
START_MS = 1_104_537_600_000   # 2005-01-01T00:00:00Z
LABELS = list(DEFAULT_LABELS)
SOURCE = "mkt"
BATCH = 5_000_000              # candles generated and written at a time
WARMUP = 3_000
TARGET_SOURCE, TARGET_DERIVED, TARGET_UPDATE = 0.90, 0.75, 0.20
MAPS = ["instrument=symbol", "ts=time", "open=o", "high=h", "low=l", "close=c", "volume=v"]


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _float32_exact(t: pa.Table) -> pa.Table:
    for c in ("open", "high", "low", "close", "volume"):
        t = t.set_column(t.column_names.index(c), c, t.column(c).cast(pa.float32()).cast(pa.float64()))
    return t


def setup(svc: Any, n: int) -> str:
    """The candles into the built-in table and a foreign-schema table; the
    foreign table's name."""
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.storage.clickhouse_store import SeriesKey

    store = svc.store
    rel = f"{store.db}.ohlc_m1"
    store.command(f"""
        CREATE TABLE {rel} (symbol LowCardinality(String), time DateTime('America/New_York'),
            o Float32, h Float32, l Float32, c Float32, v Nullable(Float32), note String)
        ENGINE = MergeTree ORDER BY (symbol, time)""")
    rng = np.random.default_rng(1)
    for first in range(0, n, BATCH):
        t = _float32_exact(generate(INSTRUMENT, "M1", START_MS + first * STEP_MS,
                                    START_MS + min(first + BATCH, n) * STEP_MS))
        volume = t.column("volume").to_numpy().copy()
        nulls = (np.arange(first, first + t.num_rows) % 7) == 0
        mine = t.set_column(t.column_names.index("volume"), "volume", pa.array(np.where(nulls, 0.0, volume)))
        svc.ingest_table(SeriesKey(INSTRUMENT, "M1"), mine)
        theirs = pa.table({
            "symbol": [INSTRUMENT] * t.num_rows,
            "time": t.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("s", tz="UTC")),
            **{k: t.column(c).cast(pa.float32()) for k, c in
               (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))},
            "v": pa.array(volume.astype(np.float32), mask=nulls), "note": ["x"] * t.num_rows})
        theirs = theirs.take(pa.array(rng.permutation(t.num_rows)))
        for at in range(0, theirs.num_rows, 1_000_000):  # several parts, each in random order
            store.client.insert_arrow(rel, theirs.slice(at, 1_000_000))
    store.command(f"OPTIMIZE TABLE {store.db}.candles FINAL")
    store.command(f"OPTIMIZE TABLE {rel} FINAL")
    svc.sources.add(SOURCE, rel, MAPS, granularity="M1")
    return rel


def truncate(store: Any, set_id: str) -> None:
    store.command(f"TRUNCATE TABLE IF EXISTS {store.db}.labels_{set_id}")
    store.command(f"TRUNCATE TABLE IF EXISTS {store.db}.label_chunks")


def settle() -> None:
    """Before a timed phase: collect garbage and write dirty pages out
    (see bench/backfill.py's ``_settle``)."""
    gc.collect()
    os.sync()


def job(svc: Any, granularity: str, start_ms: int, end_ms: int, source: str | None,
        chunk_size: int | None = None) -> tuple[float, str]:
    settle()
    t0 = time.perf_counter()
    job_id = svc.create_job(INSTRUMENT, granularity, _dt(start_ms), _dt(end_ms), LABELS,
                            chunk_size=chunk_size, source=source)
    run = svc.execute(job_id)
    spent = time.perf_counter() - t0
    if run.status != "completed":
        raise RuntimeError(f"job {job_id} ended {run.status}: {svc.job(job_id).model_dump()['last_errors']}")
    return spent, job_id


def labels_digest(store: Any, set_id: str, granularity: str, source: str) -> tuple[int, int]:
    """(rows, an order-independent hash of every label column) of a series."""
    table = f"{store.db}.labels_{set_id}"
    cols = [c for c, *_ in store.rows(f"DESCRIBE TABLE {table}")
            if c not in ("instrument", "granularity", "label_set", "source")]
    return tuple(store.rows(
        f"SELECT count(), sum(cityHash64(toString(tuple({', '.join(cols)})))) FROM {table} "
        f"WHERE instrument = '{INSTRUMENT}' AND granularity = '{granularity}' AND source = '{source}'")[0])


class Statements:
    """chDB's own figures (seconds, rows and bytes read from storage) of
    each statement the store's client runs while in use (the embedded
    chDB keeps no ``system.query_log``; each result carries them)."""

    def __init__(self, store: Any):
        self.client, self.seen = store.client, []

    def __enter__(self) -> Statements:
        run = self.client._query

        def recorded(sql: str, fmt: str, parameters: dict | None):
            res = run(sql, fmt, parameters)
            self.seen.append((sql, res.elapsed(), res.storage_rows_read(), res.storage_bytes_read()))
            return res

        self.client._query = recorded
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.client._query


def derived_floor(store: Any, set_id: str) -> dict[str, Any]:
    """chDB alone: the H1 aggregating read (one statement) and the insert of
    the job's own label rows (one statement), each timed alone."""
    from gpubackfill.storage.clickhouse_client import arrow_result
    from gpubackfill.storage.clickhouse_store import DERIVED_SETTINGS

    conn = store.client._conn  # the raw chDB connection: no engine code between
    table = f"{store.db}.labels_{set_id}"
    where = f"instrument = '{INSTRUMENT}' AND granularity = 'H1' AND source = '{SOURCE}'"
    rows = store.arrow(f"SELECT * FROM {table} WHERE {where}")
    cols = ", ".join(f"`{c}`" for c in rows.column_names)
    rel = store.source(SOURCE).relation_for("H1")
    # With the settings the engine reads a derived series with: the same read.
    read_sql = (f"SELECT ts, open, high, low, close, volume FROM {rel} "
                f"WHERE instrument = '{INSTRUMENT}' AND granularity = 'H1' ORDER BY ts "
                f"SETTINGS {DERIVED_SETTINGS}")
    # The same read with a plain sum() of volumes, whose last bit depends
    # on how the read is split over threads (the engine adds them in order
    # of value: ``ORDER_FREE_SUM``): what the floor was before, shown beside it.
    from gpubackfill.sources.source import ORDER_FREE_SUM

    plain_sql = read_sql.replace(ORDER_FREE_SUM, "sum(volume)")
    best_read = best_insert = best_plain = float("inf")
    bars = 0
    for _ in range(2):
        settle()
        t0 = time.perf_counter()
        got = arrow_result(conn.query(read_sql, "Arrow"))
        best_read = min(best_read, time.perf_counter() - t0)
        bars = got.num_rows
        del got
        settle()
        t0 = time.perf_counter()
        arrow_result(conn.query(plain_sql, "Arrow"))
        best_plain = min(best_plain, time.perf_counter() - t0)
        store.command(f"TRUNCATE TABLE {table}")
        settle()
        t0 = time.perf_counter()
        conn.query(f"INSERT INTO {table} ({cols}) SELECT * FROM Python(rows)")
        best_insert = min(best_insert, time.perf_counter() - t0)
    (n,) = store.rows(f"SELECT count() FROM {table} WHERE {where}")[0]
    if n != rows.num_rows or bars != rows.num_rows:
        raise RuntimeError(f"floor: read {bars} bars, inserted {n} rows, the job wrote {rows.num_rows}")
    return {"read_s": best_read, "insert_s": best_insert, "bars": bars, "plain_read_s": best_plain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candles", type=float, default=1e6)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two M1 jobs, and H1 jobs (best taken)")
    args = ap.parse_args()
    n = int(args.candles)
    home = tempfile.mkdtemp(prefix="gpubackfill-sources-bench-")
    settings = Settings.from_env({"GPUBACKFILL_HOME": home}, dotenv=False)
    print(f"sources speed: {n:,} M1 candles; {_report.cpu_model()}, {os.cpu_count()} cores; "
          f"Python {sys.version.split()[0]}, gpubackfill {gpubackfill.__version__}")
    print(f"load average before: {_report.load_average()}")
    try:
        from gpubackfill.service import BackfillService
        from gpubackfill.storage.clickhouse_store import SeriesKey

        gpubackfill.keep_freed_memory()
        svc = BackfillService(settings)
        svc.init()
        t0 = time.perf_counter()
        setup(svc, n)
        print(f"setup (generate, ingest, foreign table, merges): {time.perf_counter() - t0:.1f} s")
        store = svc.store
        set_id = label_set_id(resolve(LABELS))
        start_ms, end_ms = START_MS, START_MS + n * STEP_MS

        # Warm-up: Dask, numba's cache, chDB, both reads.
        for src in (None, SOURCE):
            job(svc, "M1", start_ms, start_ms + WARMUP * STEP_MS, src, chunk_size=1_000)
        truncate(store, set_id)

        # (a) the same default job over the built-in table and the source, in alternation.
        times: dict[str, list[float]] = {"built-in": [], "source": []}
        for _ in range(args.rounds):
            for name, src in (("built-in", None), ("source", SOURCE)):
                truncate(store, set_id)
                spent, job_id = job(svc, "M1", start_ms, end_ms, src)
                times[name].append(spent)
        chunks = svc.job(job_id).model_dump()["chunks_total"]
        # The source's labels are the last written; the built-in's once more, to compare.
        job(svc, "M1", start_ms, end_ms, None)
        same = labels_digest(store, set_id, "M1", "") == labels_digest(store, set_id, "M1", SOURCE)
        mine, theirs = min(times["built-in"]), min(times["source"])

        # (c) update with nothing changed: prints recomputed in ClickHouse, no job.
        update_times = []
        for _ in range(2):
            settle()
            t0 = time.perf_counter()
            plans = svc.plan_update(INSTRUMENT, "M1", source=SOURCE)
            update_times.append(time.perf_counter() - t0)
            if plans:
                raise RuntimeError(f"update found work with nothing changed: {plans}")
        key = SeriesKey(INSTRUMENT, "M1", SOURCE)
        from gpubackfill.sources import fingerprint

        records = sorted({p[0] for p in map(fingerprint.parse, store.chunk_prints(SOURCE).values()) if p})
        settle()
        with Statements(store) as stmts:
            t0 = time.perf_counter()
            store.window_prints(key, records)
            prints_s = time.perf_counter() - t0
        (_, q_s, q_rows, q_bytes), = stmts.seen
        update_s = min(update_times)

        # (b) H1 derived from the source's M1, against chDB alone.
        h1_times = []
        for _ in range(args.rounds):
            truncate(store, set_id)
            spent, h1_job = job(svc, "H1", start_ms, end_ms, SOURCE)
            h1_times.append(spent)
        h1_s = min(h1_times)
        h1_chunks = svc.job(h1_job).model_dump()["chunks_total"]
        floor = derived_floor(store, set_id)
        floor_s = floor["read_s"] + floor["insert_s"]
        load_after = _report.load_average()
    finally:
        from gpubackfill.storage.redis_server import stop_server

        stop_server(settings.redis_dir)
        shutil.rmtree(home, ignore_errors=True)

    def ok(good: bool) -> str:
        return "PASS" if good else "MISS"

    rows = [
        ["(a) M1 backfill, built-in table", f"{n:,} candles, {chunks} chunks", f"{mine:.2f}",
         _report.human(n / mine * 60), "", ""],
        ["(a) M1 backfill, foreign-schema source", f"{n:,} candles, {chunks} chunks", f"{theirs:.2f}",
         _report.human(n / theirs * 60), f"{mine / theirs:.0%} of built-in",
         f">= {TARGET_SOURCE:.0%} {ok(mine / theirs >= TARGET_SOURCE)}"],
        ["(b) H1 derived from M1, job", f"{floor['bars']:,} bars, {h1_chunks} chunks", f"{h1_s:.2f}",
         "", "", ""],
        ["(b) H1 floor: aggregating read + insert", f"{floor['read_s']:.2f} + {floor['insert_s']:.2f} s",
         f"{floor_s:.2f}", "", f"job at {floor_s / h1_s:.0%} of floor",
         f">= {TARGET_DERIVED:.0%} {ok(floor_s / h1_s >= TARGET_DERIVED)}"],
        ["(b) floor with the read's plain sum()", f"{floor['plain_read_s']:.2f} + {floor['insert_s']:.2f} s",
         f"{floor['plain_read_s'] + floor['insert_s']:.2f}", "",
         f"job at {(floor['plain_read_s'] + floor['insert_s']) / h1_s:.0%} of it", ""],
        ["(c) update, nothing changed (plan_update)", f"{len(records)} chunk prints", f"{update_s:.2f}",
         "", f"{update_s / theirs:.0%} of the backfill",
         f"<= {TARGET_UPDATE:.0%} {ok(update_s / theirs <= TARGET_UPDATE)}"],
        ["(c) of which the window-print query", f"read {q_rows:,} rows, {_report.mib(q_bytes)} MiB",
         f"{prints_s:.2f}", "", f"chDB {q_s:.2f} s", ""],
    ]
    _report.print_table(["what", "size", "seconds (best)", "candles/min", "ratio", "target"], rows,
                        title=f"Sources at {n:,} M1 candles (default labels; every job create_job + execute)")
    print(f"M1 jobs, every round (s): built-in {', '.join(f'{t:.2f}' for t in times['built-in'])}; "
          f"source {', '.join(f'{t:.2f}' for t in times['source'])}")
    print(f"labels of the two M1 jobs equal (count and hash of every column): {same}")
    print(f"update runs (s): {', '.join(f'{t:.2f}' for t in update_times)}")
    print(f"H1 jobs, every round (s): {', '.join(f'{t:.2f}' for t in h1_times)}")
    print(f"load average after: {load_after}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
