"""End-to-end backfill benchmark: the batch engine (ClickHouse in and out,
job state in Redis, Dask workers) against what chDB alone does with the same data.

What it measures, on the EMBEDDED default (chDB in process + the bundled
redis-server), in a fresh temporary ``GPUBACKFILL_HOME`` that is deleted at
the end:

1. Setup (one subprocess; past 20M candles, 10M at a time): a synthetic M1 series of ``--candles`` bars of
   BTCUSD (``gpubackfill.candles.synthetic.generate``; crypto trades 24/7, so the
   range holds exactly that many bars), the compute floor (``compute_labels``
   with all three labels, default parameters, on the whole series: median of
   ``--repeats`` calls after a warm-up), ingest through
   ``BackfillService.ingest_table`` (validation included), then
   ``OPTIMIZE TABLE candles FINAL`` (timed separately) so that no background
   merge of the ingest runs during the measurements.
2. Per chunk size (one fresh subprocess each, so its peak RSS is its own and
   not a high-water mark left by the setup or by an earlier chunk size):
   a warm-up job over the first 3,000 candles (starts the Dask cluster,
   loads the numba cache, opens chDB); the label tables are emptied; then a
   job with all three labels over the whole range, default settings but for
   the chunk size and ``--workers`` workers: ``create_job`` (planning) and ``execute`` are timed
   apart; per-chunk seconds come from the job's Redis durations
   (``state.durations``, which keep the most recent chunks only) and, for
   every chunk, from the wrapped ``_compute_and_write`` (the span that
   ``run_chunk`` reports); peak RSS is the kernel's VmHWM over ``execute``
   (reset through /proc/self/clear_refs), with psutil samples every 100 ms
   as a cross-check (every 5 ms where VmHWM cannot be reset).  While the job runs, the
   engine's chunk steps are timed by wrapping them in this process (load,
   fingerprint, validation, compute, the writes, Redis), which is where the
   "where time goes" table comes from.
3. The floor, in the same subprocess, after the label tables are emptied
   again: chDB alone, called directly on the process's connection, one
   chunk after another over the same chunk plan.  Every read method chDB
   offers here reads each chunk's candles with its halo, and every insert
   method writes each chunk's label rows (a label table computed once, with
   each chunk's own ts); the floor is the fastest read plus the fastest
   insert.  The engine's workers run their statements side by side, so
   the best methods are also timed with the chunks shared by ``--workers``
   threads, each on a connection of its own; the floor takes the fastest
   of all, and the "1-conn floor" (one connection, chunk by chunk, as
   measured before) is shown next to it.  The engine reads and inserts a
   Dask task's small consecutive chunks at once (``shared_io.SharedIO``);
   chDB doing the same is timed too and shown as the "grouped floor", but
   the floor stays a chunk a statement.  Bounds and label tables are
   prepared before the clock starts, so no engine code is timed.
   The headline is the job against chDB's *sequential* floor (issue 29):
   one statement reading every candle of the series (uncompressed Arrow
   over chDB's buffer, twice, the faster counting) plus one statement
   inserting every label row, each timed alone; the insert is the fastest
   of ``INSERT ... SELECT`` from a Memory table holding the rows (with
   and without ``max_insert_threads``) and ``INSERT ... SELECT FROM
   Python(t)`` over an Arrow table prepared before the clock starts (table
   3c).  Before each timed phase chDB's merges are let finish.  Next to
   it, the job's time budget in worker-seconds from its own stage record
   (read, compute, insert, the rest of the chunk, record, idle: table 2a).
4. Correctness, once (after the 100k run, or the last chunk size when 100k
   is not run): the rows ``service.export_file`` streams to Parquet (first
   and last ts, strictly increasing), and ``store.label_counts``
   (count == uniqExact) against the candle count.
5. Targets with PASS / MISS, and the recommended default chunk size (the
   fastest one whose peak RSS is within the target).  The job's share of
   the floor is judged at the default chunk size (>= 75%, stretch 90%)
   and at 10k (>= 60%).  With ``--rounds N`` every chunk size runs N
   times (rounds one after another, each a fresh process with its own job
   and floor); the median share is judged, and table 2b lists every round.

"End to end" is ``create_job`` + ``execute``: what a user waits for.  The
floor has no plan: it is given the chunks.  The label tables are
emptied (TRUNCATE) before every measured job and floor, so each writes into
an empty table, as a first backfill does: no chunk finds rows to delete.

6. With ``--universe`` (instead of 1-5): a universe of ``--series`` series
   of ``--series-candles`` candles (BTC000.. at M5, 24/7) against one
   series of as many candles in total (BTCUSD M1), each job at the default
   chunk size in its own fresh subprocess after a warm-up, all labels,
   ``force=True``, in one run; and the universe again with packing off
   (one series per chunk), to show what packing small series buys.

Run from the repository root::

    python bench/backfill.py                     # 10M candles; chunks 10k, 100k, 1M
    python bench/backfill.py --candles 1e6 --chunk-sizes 100000 --workers 2
    python bench/backfill.py --quick             # 300k candles, 10k and 100k; targets not judged
    python bench/backfill.py --chunk-sizes 10000,1000000 --rounds 3   # the floor targets, median of 3
    python bench/backfill.py --universe          # 300 x 50k candles against one 15M series
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import mmap
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import report as _report  # bench/report.py: a script's own folder is first on sys.path

import gpubackfill
from gpubackfill.config import Settings
from gpubackfill.engine import submit
from gpubackfill.labels import DEFAULT_LABELS

cpu_model, human, load_average, mib = _report.cpu_model, _report.human, _report.load_average, _report.mib
print_table, size_name, _status_kb = _report.print_table, _report.size_name, _report._status_kb
RssSampler, _reset_peak_rss, verdict = _report.RssSampler, _report.reset_peak_rss, _report.verdict

INSTRUMENT = "BTCUSD"          # 24/7: no weekend gaps, so N bars need N minutes
GRANULARITY = "M1"
STEP_MS = 60_000
START_MS = 1_104_537_600_000   # 2005-01-01T00:00:00Z
LABELS = list(DEFAULT_LABELS)  # the three a job computes by default
IN_MEMORY_MAX = 20_000_000   # larger series are set up SETUP_BATCH candles at a time
SETUP_BATCH = 10_000_000
WARMUP_CANDLES = 3_000
WARMUP_CHUNK = 1_000
SETTLE_MERGES_S = 60.0  # the longest wait for chDB's merges before a timed phase

TARGET_PER_MIN = 100e6
TARGET_DEFAULT_SHARE = 0.75   # of the floor, at the default chunk size (issue 13)
STRETCH_DEFAULT_SHARE = 0.90
TARGET_SMALL_SHARE = 0.60     # of the floor, at SMALL_CHUNK
TARGET_SEQ_SHARE = 0.80       # of the sequential floor, at the default chunk size (issue 29)
STRETCH_SEQ_SHARE = 1.00
TARGET_SEQ_SMALL_SHARE = 0.60  # of the sequential floor, at SMALL_CHUNK
RSS_SAMPLE_S = 0.1            # with VmHWM: a cross-check only
RSS_SAMPLE_FALLBACK_S = 0.005
TARGET_RSS = 2e9               # bytes: 2 GB
TARGET_CHUNK_S = 1.0           # median seconds per 10k-candle chunk
SMALL_CHUNK = 10_000
VERIFY_CHUNK = 100_000
RSS_INTERVAL = 0.005
RESULT_MARK = "@@RESULT@@ "


# ---------------------------------------------------------------------------
# formatting (the style of bench/labels_speed.py)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def _redis_version() -> str:
    try:
        from gpubackfill.storage.redis_server import redis_executable

        out = subprocess.run([redis_executable(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "?")
    except Exception:
        return "?"


def print_header(args: argparse.Namespace) -> None:
    import psutil

    from gpubackfill.engine.task import default_numba_threads
    from gpubackfill.labels import halo, resolve

    cores = os.cpu_count()
    physical = psutil.cpu_count(logical=False)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    resolved = resolve(LABELS)
    back, ahead = halo(resolved)
    params = "; ".join(f"{r.name} {json.dumps(r.params, sort_keys=True)}" for r in resolved)
    print("gpubackfill backfill benchmark (embedded chDB + bundled redis-server)")
    print(f"command   : {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine   : {cpu_model()}; {cores} logical cores ({physical} physical, "
          f"{affinity} usable); {psutil.virtual_memory().total / 2**30:.1f} GiB RAM; "
          f"{platform.system()} {platform.release()}")
    print(f"python    : {platform.python_version()} ({platform.python_implementation()})")
    print(f"libraries : gpubackfill {gpubackfill.__version__}, chdb {_version('chdb')}, "
          f"clickhouse-connect {_version('clickhouse-connect')}, redis-server {_redis_version()}, "
          f"redis-py {_version('redis')}, distributed {_version('distributed')}, "
          f"numba {_version('numba')}, numpy {np.__version__}, pyarrow {pa.__version__}")
    print(f"load avg  : {load_average()} (1/5/15 min at start; other processes on these "
          f"{cores} cores slow every number below)")
    if args.universe:
        total = args.series * args.series_candles
        print(f"series    : {args.series} x {args.series_candles:,} candles (BTC000.. "
              f"{UNIVERSE_GRANULARITY}) against {INSTRUMENT} {GRANULARITY} of {total:,}, "
              f"synthetic (gpubackfill.candles.synthetic.generate) from {_iso(START_MS)}")
    else:
        print(f"series    : {INSTRUMENT} {GRANULARITY}, {args.candles:,} synthetic candles "
              f"(gpubackfill.candles.synthetic.generate) from {_iso(START_MS)}")
    print(f"labels    : {params}")
    print(f"halo      : {back:,} bars back, {ahead:,} ahead")
    sizes = ("the default (BATCH_CHUNK_SIZE)" if args.universe
             else ", ".join(size_name(c) for c in args.chunk_sizes))
    print(f"settings  : chunk sizes = {sizes}; "
          f"workers = {args.workers} (Dask threads in process; numba threads per chunk = "
          f"{default_numba_threads(args.workers)}); force = True; compute repeats = "
          f"{args.repeats}{'; QUICK mode' if args.quick else ''}")
    print("allocator : gpubackfill.keep_freed_memory() in every process, as the engine runs")
    print("process   : setup (generate, ingest) in one subprocess; each job in a fresh "
          "subprocess (its RSS is its own)")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# measurement helpers (run in the child processes)


class StageTimers:
    """Wall time spent in the engine's chunk steps, summed over threads.

    Wraps functions in place (module attributes and the shared Store /
    RedisState instances); a step that is not found (renamed in the engine)
    is listed in ``missing`` and reported as n/a.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.each: dict[str, list[float]] = defaultdict(list)  # stages named in ``keep``
        self.keep: set[str] = set()
        self.missing: list[str] = []

    def reset(self) -> None:
        with self._lock:
            self.total.clear()
            self.calls.clear()
            self.each.clear()

    def snapshot(self) -> dict[str, list[float]]:
        with self._lock:
            return {k: [v, self.calls[k]] for k, v in self.total.items()}

    def wrap(self, owner: Any, attr: str, stage: Any) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            self.missing.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}")
            return
        pick = stage if callable(stage) else (lambda *a, **k: stage)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                name = pick(*args, **kwargs)
                with self._lock:
                    self.total[name] += dt
                    self.calls[name] += 1
                    if name in self.keep:
                        self.each[name].append(dt)

        setattr(owner, attr, timed)


def _insert_stage(table: str, *args: Any, **kwargs: Any) -> str:
    return "write: insert labels" if table.startswith("labels_") else "write: insert manifest"


def install_timers(store: Any, state: Any) -> StageTimers:
    """Time the store's and the state's public calls in this process (the
    chunk's own steps come from the job's record, ``status()["stages"]``)."""
    t = StageTimers()
    t.wrap(store, "load", "load")
    t.wrap(store, "write_labels", "write (total)")
    t.wrap(store, "rows", "write: count query")
    t.wrap(store, "command", "write: delete")
    t.wrap(store, "insert_arrow", _insert_stage)
    t.wrap(state, "complete_many", "redis: complete")
    t.wrap(state, "claim_many", "redis: claim (driver)")
    return t


# The chunk's steps as the engine records them -> the rows of table 3.
_JOB_STAGES = {"load": "load", "fingerprint": "fingerprint", "validate": "to_series + validate",
               "compute": "compute", "write": "write (total)"}


def _job_stages(status: dict[str, Any], chunks: int) -> dict[str, list[float]]:
    return {_JOB_STAGES[k]: [v, chunks] for k, v in status["stages"].items() if k in _JOB_STAGES}


def _settings(home: str) -> Settings:
    return Settings.from_env({"GPUBACKFILL_HOME": home}, dotenv=False)


def _truncate(store: Any, set_id: str) -> None:
    store.command(f"TRUNCATE TABLE IF EXISTS {store.db}.labels_{set_id}")
    store.command(f"TRUNCATE TABLE IF EXISTS {store.db}.label_chunks")


def _settle(store: Any) -> None:
    """Before a timed phase: let chDB's background merges finish, collect
    garbage, and write the page cache's dirty pages out.

    - Merges: those of the parts an earlier phase wrote took a core from
      whatever was timed beside them (the same sequential read took 1.8 s
      in one subprocess and 0.9-1.2 s in the next).
    - Dirty pages: setup leaves ~1.3 GB of them and each phase ~0.5 GB more;
      the kernel writes them back ~30 s later, during whatever phase runs
      then, so without the sync the job paid for setup's writes and the
      floor's methods for each other's (the same 10M job, back to back:
      3.12 to 3.63 s without, 3.14 to 3.31 s with; the sync took 0.56 s)."""
    deadline = time.monotonic() + SETTLE_MERGES_S
    while store.rows("SELECT count() FROM system.merges")[0][0] and time.monotonic() < deadline:
        time.sleep(0.1)
    gc.collect()
    os.sync()


def machine_check() -> tuple[float, float]:
    """CPU milliseconds of two fixed workloads in this thread: arithmetic
    on data that stays in cache, and a 256 MB copy (memory bandwidth and
    the kernel's page handling of already-touched pages).  Timed right
    before and after a job, they show whether the machine itself was slower
    during that job: the same job's CPU seconds moved by up to 40% between
    runs minutes apart, and this VM exposes no hardware counters to
    ``perf``."""
    x = np.linspace(0.0, 1.0, 100_000)
    out = np.empty_like(x)
    # The copy's 512 MB in mappings of their own, unmapped on return: from
    # numpy (glibc's heap under keep_freed_memory) they stayed in the
    # process and in the job's peak RSS (1.93-2.02 GB against 1.4-1.5).
    maps = [mmap.mmap(-1, 32_000_000 * 8) for _ in range(2)]
    try:
        src, dst = (np.frombuffer(m, np.float64) for m in maps)
        src.fill(1.0)
        np.copyto(dst, src)  # first touch outside the timing
        t0 = time.thread_time()
        for _ in range(100):
            np.sin(x, out=out)
        t1 = time.thread_time()
        for _ in range(4):
            np.copyto(dst, src)
        t2 = time.thread_time()
        del src, dst
    finally:
        for m in maps:
            m.close()
    return 1000 * (t1 - t0), 1000 * (t2 - t1)


def _cpu_s() -> float:
    """CPU seconds of this process so far, chDB's threads included: steadier
    than wall time when other processes share the cores (not immune: cache
    and memory contention inflate it too)."""
    t = os.times()
    return t.user + t.system


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# ---------------------------------------------------------------------------
# child: setup


def child_setup(args: argparse.Namespace) -> dict[str, Any]:
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import SeriesKey

    gpubackfill.keep_freed_memory()
    svc = BackfillService(_settings(args.home))
    key = SeriesKey(INSTRUMENT, GRANULARITY)

    # Past IN_MEMORY_MAX the series is generated and ingested a batch at a
    # time (its labels alone would not fit: ~15 GB at 100M), and the compute
    # floor is measured on the first batch.
    batch = args.candles if args.candles <= IN_MEMORY_MAX else SETUP_BATCH
    gen_s = ingest_s = 0.0
    n = inserted = rejected = 0
    compute_s = compute_min = 0.0
    for first in range(0, args.candles, batch):
        t0 = time.perf_counter()
        table = generate(INSTRUMENT, GRANULARITY, START_MS + first * STEP_MS,
                         START_MS + min(first + batch, args.candles) * STEP_MS)
        gen_s += time.perf_counter() - t0
        n += table.num_rows
        if first == 0:
            gpubackfill.compute_labels(table.slice(0, 5_000), LABELS)  # compile / load the cache
            times = []
            for _ in range(args.repeats):
                gc.collect()
                t0 = time.perf_counter()
                out = gpubackfill.compute_labels(table, LABELS)
                times.append(time.perf_counter() - t0)
                del out
            compute_s, compute_min, compute_n = statistics.median(times), min(times), table.num_rows
        t0 = time.perf_counter()
        report = svc.ingest_table(key, table)
        ingest_s += time.perf_counter() - t0
        inserted, rejected = inserted + report.inserted, rejected + len(report.rejected)
        del table
    t0 = time.perf_counter()
    svc.store.command(f"OPTIMIZE TABLE {svc.store.db}.candles FINAL")
    optimize_s = time.perf_counter() - t0
    rows, lo, hi = svc.store.series_summary(key)
    return {"n": n, "generate_s": gen_s, "compute_s": compute_s, "compute_min_s": compute_min,
            "compute_n": compute_n, "ingest_s": ingest_s, "optimize_s": optimize_s,
            "inserted": inserted, "rejected": rejected, "rows": rows, "first": lo, "last": hi,
            "setup_batch": batch}


# ---------------------------------------------------------------------------
# child: one chunk size


def child_job(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from gpubackfill.labels import halo, label_set_id, resolve
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import SeriesKey

    gpubackfill.keep_freed_memory()
    cs, workers = args.chunk_size, args.workers
    svc = BackfillService(_settings(args.home))
    store, state = svc.store, svc.state
    key = SeriesKey(INSTRUMENT, GRANULARITY)
    n, lo, hi = store.series_summary(key)
    start_ms, end_ms = lo, hi + STEP_MS
    resolved = resolve(LABELS)
    set_id = label_set_id(resolved)
    back, ahead = halo(resolved)
    res: dict[str, Any] = {"chunk_size": cs, "n": n, "workers": workers}

    # Warm-up: Dask cluster, numba cache, chDB; then empty the label tables.
    t0 = time.perf_counter()
    warm = svc.create_job(INSTRUMENT, GRANULARITY, _dt(start_ms),
                          _dt(start_ms + min(n, WARMUP_CANDLES) * STEP_MS), LABELS,
                          chunk_size=WARMUP_CHUNK, workers=workers, force=True)
    wres = svc.execute(warm)
    res["warmup_s"] = time.perf_counter() - t0
    if wres.status != "completed":
        raise RuntimeError(f"warm-up job {warm} ended {wres.status}: {svc.job(warm).model_dump()['last_errors']}")
    _truncate(store, set_id)

    timers = install_timers(store, state)
    res["timers_missing"] = timers.missing

    # The job.
    res["check_before"] = machine_check()
    _settle(store)
    t0 = time.perf_counter()
    job = svc.create_job(INSTRUMENT, GRANULARITY, _dt(start_ms), _dt(end_ms), LABELS,
                         chunk_size=cs, workers=workers)
    res["plan_s"] = time.perf_counter() - t0
    res["chunks"] = int(state.job(job)["chunks_total"])
    timers.reset()
    # The peak is the kernel's high-water mark where it can be reset; then
    # RSS is only sampled every 100 ms as a cross-check.  Sampling every 5 ms
    # (psutil in a Python thread) took 0.3-1 CPU s from a 10M job at 1M
    # chunks, ~6% of its wall time, which the floor did not pay.
    hwm = _reset_peak_rss()
    with RssSampler(RSS_SAMPLE_S if hwm else RSS_SAMPLE_FALLBACK_S) as rss:
        t0, cpu0 = time.perf_counter(), _cpu_s()
        run = svc.execute(job)
        res["execute_s"] = time.perf_counter() - t0
        res["execute_cpu_s"] = _cpu_s() - cpu0
    res["check_after"] = machine_check()
    res["rss_before"], res["rss_peak"], res["rss_samples"] = rss.before, rss.peak, rss.samples
    res["vmhwm"] = _status_kb("VmHWM") * 1024 if hwm else None
    if res["vmhwm"]:
        res["rss_peak"] = max(res["rss_peak"], res["vmhwm"])
    status = svc.job(job).model_dump()
    # The chunk's steps from the job's own record; the store's calls (count,
    # delete, inserts) from the wrapped store.
    res["stages"] = {**timers.snapshot(), **_job_stages(status, status["chunks"]["done"])}
    res["stages_total_s"] = status["stages"].get("total", 0.0)
    res["budget"] = job_budget(status["stages"], workers, res["execute_s"])
    res["status"], res["candles_done"] = run.status, run.candles
    if run.status != "completed" or run.candles != n:
        res["errors"] = svc.job(job).model_dump()["last_errors"]
    # Redis keeps the most recent chunk durations only (for the ETA); the
    # job's stage record sums every chunk.
    secs = [d for d, _ in state.durations(job)]
    res["chunk_durations"] = len(secs)
    res["chunk_p50_s"] = float(np.median(secs)) if secs else None
    res["chunk_max_s"] = max(secs) if secs else None
    res["chunk_sum_s"] = res["stages_total_s"]

    if args.verify:
        # Exported as a user would: streamed to a Parquet file, batch by batch.
        path = Path(args.home) / "verify.parquet"
        t0 = time.perf_counter()
        rows, _, _ = svc.export_file(path, INSTRUMENT, GRANULARITY)
        res["export_s"] = time.perf_counter() - t0
        count, uniq = store.label_counts(key, set_id)
        first = last = None
        increasing = True
        import pyarrow.parquet as pq
        with pq.ParquetFile(path) as f:
            for b in f.iter_batches(columns=["ts"], batch_size=1 << 22):
                ts = b.column(0).cast(pa.int64()).to_numpy()
                if len(ts):
                    increasing = increasing and bool(np.all(np.diff(ts) > 0)) and (last is None or bool(ts[0] > last))
                    first = int(ts[0]) if first is None else first
                    last = int(ts[-1])
        path.unlink()
        res["verify"] = {"export_rows": rows, "count": count, "uniq": uniq,
                         "first_ok": first == lo, "last_ok": last == hi, "sorted_unique": increasing}

    # The floor: chDB's own best read of each chunk's candles (halo
    # included) and insert of its label rows, nothing of the engine between.
    _truncate(store, set_id)
    res.update(chdb_floor(store, key, set_id, start_ms, end_ms, cs, back, ahead, workers))
    _truncate(store, set_id)
    res["rss_end"] = psutil.Process().memory_info().rss
    return res


# ---------------------------------------------------------------------------
# the floor: chDB alone

READS = {
    "query Arrow, read in place": "one query, uncompressed Arrow read over chDB's buffer",
    "send_query Arrow batches": "streamed record batches, gathered into a Table",
    "query Arrow, read in place, N threads": "the chunks shared by --workers threads, a handle each",
    "query Arrow, read in place, a task's chunks at once, N threads":
        "as the engine groups small chunks into a Dask task: one read per group",
}
WRITES = {
    "send_insert ArrowStream, one message": "the chunk as one Arrow IPC stream message",
    "send_insert ArrowStream, 64k-row messages": "the chunk as 64k-row IPC messages",
    "send_insert Arrow file": "the chunk as one Arrow IPC file",
    "Python() table function, keys as constants": "INSERT ... SELECT 'EURUSD', ... FROM Python(t)",
    "Python() table function, keys as constants, max_threads = 1": "the same on one thread, as the engine inserts",
    "Python() table function, keys as columns": "INSERT ... SELECT * FROM Python(t), keys as dictionaries",
    "send_insert ArrowStream, one message, N threads": "the chunks shared by --workers threads, a handle each",
    "Python() table function, keys as constants, N threads": "the chunks shared by --workers threads, a handle each",
    "send_insert ArrowStream, one message, a task's chunks at once, N threads":
        "as the engine groups small chunks into a Dask task: one insert per group",
    "Python() table function, keys as constants, a task's chunks at once, N threads":
        "as the engine groups small chunks into a Dask task: one insert per group",
}


_floor_names = itertools.count()


def threaded(method: str) -> bool:
    """A floor method whose chunks are shared by --workers threads."""
    return method.endswith(", N threads")


def at_once(method: str) -> bool:
    """A floor method that reads or inserts a task's chunks in one statement."""
    return "a task's chunks at once" in method


def chdb_floor(store: Any, key: Any, set_id: str, start_ms: int, end_ms: int, cs: int,
               back: int, ahead: int, threads: int) -> dict[str, Any]:
    """Each read and insert method over the job's chunk plan, called on chDB
    directly: seconds per method.  One chunk at a time on the process's
    connection, and, since the engine's workers run their statements side
    by side, the best methods also with the chunks shared by ``threads``
    threads, each on a chDB connection of its own (so the floor stays chDB's
    best, not only its best on one thread).  The read bounds (each chunk
    with its halo) and the label rows (a template computed once, with each
    chunk's own ts) are prepared before the clock starts; only chDB's calls
    are timed."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import chdb

    from gpubackfill.storage.clickhouse_client import arrow_result

    conn = store.client._conn  # the raw chDB connection: no engine code between
    local = threading.local()

    def own_conn():
        """The calling thread's raw chDB connection (the floor's threads)."""
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = chdb.connect(str(store.settings.chdb_path))
            c.query("SET output_format_arrow_compression_method = 'none'", "TabSeparated")
        return c
    table = f"{store.db}.labels_{set_id}"
    ts = store.arrow(f"SELECT toUnixTimestamp64Milli(ts) AS t FROM {store.db}.candles "
                     f"WHERE instrument = '{key.instrument}' AND granularity = '{key.granularity}' "
                     f"AND ts >= fromUnixTimestamp64Milli({start_ms}, 'UTC') - INTERVAL 30 DAY "
                     f"ORDER BY ts").column("t").to_numpy()
    first = int(np.searchsorted(ts, start_ms))
    last = int(np.searchsorted(ts, end_ms))
    chunks = []
    for i in range(first, last, cs):
        j = min(i + cs, last)
        chunks.append((i, j, int(ts[max(i - back, 0)]), int(ts[min(j + ahead, len(ts)) - 1])))
    # Small chunks go several to a Dask task, and the engine reads and
    # inserts a task's consecutive chunks at once (shared_io.SharedIO): the
    # floor may group them the same way (the driver's rule).
    from gpubackfill.engine.driver import most_per_task

    per_task = most_per_task(len(chunks), threads)
    groups: list[list[tuple[int, int, int, int]]] = []
    for c in chunks:
        if (not groups or len(groups[-1]) >= per_task
                or sum(j - i for i, j, _, _ in groups[-1]) >= store.settings.task_candles):
            groups.append([])
        groups[-1].append(c)
    widest = max(g[-1][1] - g[0][0] for g in groups)
    first_table, f0, own0 = store.load(key, int(ts[chunks[0][0]]),
                                       int(ts[min(chunks[0][0] + widest, last) - 1]) + 1, back, ahead)
    template = gpubackfill.compute_labels(first_table, LABELS).slice(f0, own0)
    cols = template.column_names
    where = f"instrument = '{key.instrument}' AND granularity = '{key.granularity}'"

    def body(i: int, j: int) -> pa.Table:
        out = template.slice(0, j - i)
        stamp = pa.array(ts[i:j]).cast(pa.timestamp("ms", tz="UTC"))
        return out.set_column(cols.index("ts"), "ts", stamp)

    def keyed(t: pa.Table) -> pa.Table:
        zeros = pa.array(np.zeros(t.num_rows, np.int32))
        keys = {"instrument": key.instrument, "granularity": key.granularity, "label_set": set_id}
        return pa.table({**{k: pa.DictionaryArray.from_arrays(zeros, pa.array([v])) for k, v in keys.items()},
                         **{c: t.column(c) for c in cols}})

    def stream(t: pa.Table, fmt: str, batch: int, c: Any = None) -> None:
        buf = io.BytesIO()
        with (c or conn).send_insert(f"INSERT INTO {table} ({', '.join(t.column_names)})", fmt) as ins:
            if fmt == "Arrow":
                with pa.ipc.new_file(buf, t.schema) as w:
                    w.write_table(t)
            else:
                with pa.ipc.new_stream(buf, t.schema) as w:
                    for b in t.to_batches(max_chunksize=batch):
                        w.write_batch(b)
                        ins.append(buf.getvalue())
                        buf.seek(0)
                        buf.truncate()
            ins.append(buf.getvalue())
            ins.finish()

    def consts_insert(var: str, settings: str = "") -> str:
        names = ", ".join(cols)
        return (f"INSERT INTO {table} (instrument, granularity, label_set, {names}) "
                f"SELECT '{key.instrument}', '{key.granularity}', '{set_id}', {names} FROM Python({var})"
                + settings)

    def python_consts(t: pa.Table) -> None:
        conn.query(consts_insert("t"))

    def python_consts_1t(t: pa.Table) -> None:
        conn.query(consts_insert("t", " SETTINGS max_threads = 1"))

    def python_consts_shared(t: pa.Table) -> None:
        # chDB looks Python()'s variable up by name process-wide: inserts at
        # once each publish theirs under a name of its own.
        var = f"_floor_insert_{next(_floor_names)}"
        globals()[var] = t
        try:
            own_conn().query(consts_insert(var))
        finally:
            del globals()[var]

    def python_keyed(t: pa.Table) -> None:
        # By name: the table has a source column ('' here) that t lacks.
        conn.query(f"INSERT INTO {table} ({', '.join(t.column_names)}) SELECT * FROM Python(t)")

    writes = {
        "send_insert ArrowStream, one message": (lambda t: stream(t, "ArrowStream", 1 << 40), keyed),
        "send_insert ArrowStream, 64k-row messages": (lambda t: stream(t, "ArrowStream", 65_536), keyed),
        "send_insert Arrow file": (lambda t: stream(t, "Arrow", 0), keyed),
        "Python() table function, keys as constants": (python_consts, lambda t: t),
        "Python() table function, keys as constants, max_threads = 1": (python_consts_1t, lambda t: t),
        "Python() table function, keys as columns": (python_keyed, keyed),
        "send_insert ArrowStream, one message, N threads": (
            lambda t: stream(t, "ArrowStream", 1 << 40, own_conn()), keyed),
        "Python() table function, keys as constants, N threads": (python_consts_shared, lambda t: t),
        "send_insert ArrowStream, one message, a task's chunks at once, N threads": (
            lambda t: stream(t, "ArrowStream", 1 << 40, own_conn()), keyed),
        "Python() table function, keys as constants, a task's chunks at once, N threads": (
            python_consts_shared, lambda t: t),
    }
    select = "SELECT ts, open, high, low, close, volume FROM {db}.candles WHERE {w} " \
             "AND ts >= fromUnixTimestamp64Milli({lo}, 'UTC') AND ts <= fromUnixTimestamp64Milli({hi}, 'UTC') " \
             "ORDER BY instrument, granularity, ts"
    # (chDB's "ArrowTable" is left out: over uncompressed output, which the
    # engine's connection asks for, its table points at freed memory.)
    reads = {
        "query Arrow, read in place": lambda sql: arrow_result(conn.query(sql, "Arrow")),
        "send_query Arrow batches": lambda sql: pa.Table.from_batches(
            list(conn.send_query(sql, "Arrow").record_batch(rows_per_batch=1 << 20))),
        "query Arrow, read in place, N threads": lambda sql: arrow_result(own_conn().query(sql, "Arrow")),
        "query Arrow, read in place, a task's chunks at once, N threads":
            lambda sql: arrow_result(own_conn().query(sql, "Arrow")),
    }
    out: dict[str, Any] = {"floor_reads": {}, "floor_writes": {}, "floor_chunks": len(chunks),
                           "floor_candles": last - first}

    def timed(name: str, fn: Any, items: list) -> tuple[float, list]:
        """Wall seconds of fn over items (in turn, or shared by the threads)."""
        if not threaded(name):
            t0 = time.perf_counter()
            got = [fn(x) for x in items]
            return time.perf_counter() - t0, got
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: own_conn(), range(threads)))  # connections opened untimed
            t0 = time.perf_counter()
            got = list(pool.map(fn, items))
            return time.perf_counter() - t0, got

    spans = {False: chunks, True: [(g[0][0], g[-1][1], g[0][2], g[-1][3]) for g in groups]}
    for name, read in reads.items():
        items = spans[at_once(name)]
        sqls = [select.format(db=store.db, w=where, lo=lo, hi=hi) for _, _, lo, hi in items]
        _settle(store)
        cpu0 = _cpu_s()
        spent, got = timed(name, read, sqls)
        rows = sum(t.num_rows for t in got)
        del got
        if rows != sum(min(j + ahead, len(ts)) - max(i - back, 0) for i, j, _, _ in items):
            raise RuntimeError(f"floor read {name} returned {rows} rows")
        out["floor_reads"][name] = [spent, _cpu_s() - cpu0]
    for name, (write, prepare) in writes.items():
        store.command(f"TRUNCATE TABLE {table}")
        _settle(store)
        if threaded(name):
            # All chunks prepared first (the template's columns are shared,
            # only ts is each chunk's own), then written by the threads.
            tables = [prepare(body(i, j)) for i, j, _, _ in spans[at_once(name)]]
            cpu0 = _cpu_s()
            spent, _ = timed(name, write, tables)
            del tables
        else:
            spent, cpu0 = 0.0, _cpu_s()
            for i, j, _, _ in chunks:
                t = prepare(body(i, j))
                t0 = time.perf_counter()
                write(t)
                spent += time.perf_counter() - t0
                del t
        n = store.rows(f"SELECT count() FROM {table}")[0][0]
        if n != last - first:
            raise RuntimeError(f"floor insert {name} wrote {n} rows, not {last - first}")
        out["floor_writes"][name] = [spent, _cpu_s() - cpu0]
    out.update(sequential_floor(conn, store, table, select.format(
        db=store.db, w=where, lo=int(ts[first]), hi=int(ts[last - 1])), last - first))
    store.command(f"TRUNCATE TABLE {table}")
    # The floor is per chunk, as the issue defines it: each chunk's candles
    # read and its label rows inserted.  The engine reads and inserts a
    # task's small consecutive chunks at once; chDB doing the same is shown
    # as the "grouped floor" beside it (a floor over larger statements,
    # which at 10k chunks is the 50k-candle floor).
    out["floor_s"] = (min(v[0] for k, v in out["floor_reads"].items() if not at_once(k))
                      + min(v[0] for k, v in out["floor_writes"].items() if not at_once(k)))
    out["floor_grouped_s"] = (min(v[0] for v in out["floor_reads"].values())
                              + min(v[0] for v in out["floor_writes"].values()))
    # The same over the methods on one connection, chunk by chunk: the
    # floor as this benchmark measured it before the engine's workers ran
    # their statements side by side (kept to compare with earlier results).
    out["floor_1conn_s"] = (
        min(v[0] for k, v in out["floor_reads"].items() if not threaded(k))
        + min(v[0] for k, v in out["floor_writes"].items() if not threaded(k)))
    return out


SEQ_READS = {
    "query Arrow, read in place": "SELECT ... ORDER BY ts as uncompressed Arrow over chDB's buffer",
    "query Arrow, read in place, again": "the same statement at once, on the memory the first freed",
}
SEQ_WRITES = {
    "INSERT SELECT from a Memory table": "INSERT INTO labels_x SELECT * FROM a Memory table "
                                         "holding the label rows",
    "INSERT SELECT from a Memory table, max_insert_threads = N":
        "the same, the insert's pipeline on --workers threads",
    "Python() table function over an Arrow table": "INSERT ... SELECT * FROM Python(t), t prepared",
    "Python() table function over an Arrow table, max_threads = 1": "the same on one thread",
}


def sequential_floor(conn: Any, store: Any, table: str, sql: str, n: int) -> dict[str, Any]:
    """chDB's sequential floor: one statement reading all the series'
    candles and one inserting all its label rows, each timed alone.

    Called with ``table`` holding every label row (the last per-chunk insert
    left them there): they are copied, untimed, into a Memory table and into
    an Arrow table, and each insert method writes them from there into the
    emptied label table.  The floor is the fastest read plus the fastest
    insert."""
    from gpubackfill.storage.clickhouse_client import arrow_result

    out: dict[str, Any] = {"seq_reads": {}, "seq_writes": {}}
    # Read twice, the faster counts (the floor is chDB at its best): the
    # first read's 0.5 GB result may land on memory the host has taken back
    # (bench/first_touch.py), the second lands on the pages the first just
    # freed, as each insert below lands on the page cache its TRUNCATE freed.
    for name in ("query Arrow, read in place", "query Arrow, read in place, again"):
        _settle(store)
        cpu0, t0 = _cpu_s(), time.perf_counter()
        got = arrow_result(conn.query(sql, "Arrow"))
        out["seq_reads"][name] = [time.perf_counter() - t0, _cpu_s() - cpu0]
        if got.num_rows != n:
            raise RuntimeError(f"sequential floor read {got.num_rows} rows, not {n}")
        del got
    staging = f"{table}_seqfloor"
    store.command(f"DROP TABLE IF EXISTS {staging}")
    store.command(f"CREATE TABLE {staging} ENGINE = Memory AS SELECT * FROM {table}")
    # By name: the label table's own column order, whatever the insert.
    rows = arrow_result(conn.query(f"SELECT * FROM {table}", "Arrow")) if n <= IN_MEMORY_MAX else None
    cols = ", ".join(r[0] for r in store.rows(
        f"SELECT name FROM system.columns WHERE database = '{store.db}' "
        f"AND table = '{table.split('.', 1)[1]}' ORDER BY position"))
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    inserts = {
        "INSERT SELECT from a Memory table":
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging}",
        "INSERT SELECT from a Memory table, max_insert_threads = N":
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} "
            f"SETTINGS max_insert_threads = {workers}",
    }
    if rows is not None:
        globals()["_seq_floor_rows"] = rows
        inserts["Python() table function over an Arrow table"] = (
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM Python(_seq_floor_rows)")
        inserts["Python() table function over an Arrow table, max_threads = 1"] = (
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM Python(_seq_floor_rows) SETTINGS max_threads = 1")
    try:
        for name, stmt in inserts.items():
            store.command(f"TRUNCATE TABLE {table}")
            _settle(store)
            cpu0, t0 = _cpu_s(), time.perf_counter()
            conn.query(stmt)
            out["seq_writes"][name] = [time.perf_counter() - t0, _cpu_s() - cpu0]
            got_n = store.rows(f"SELECT count() FROM {table}")[0][0]
            if got_n != n:
                raise RuntimeError(f"sequential floor insert {name} wrote {got_n} rows, not {n}")
    finally:
        globals().pop("_seq_floor_rows", None)
        store.command(f"DROP TABLE IF EXISTS {staging}")
    read = min(out["seq_reads"].items(), key=lambda kv: kv[1][0])
    write = min(out["seq_writes"].items(), key=lambda kv: kv[1][0])
    out.update(seq_read=read[0], seq_read_s=read[1][0], seq_write=write[0], seq_write_s=write[1][0],
               seq_floor_s=read[1][0] + write[1][0])
    return out


# ---------------------------------------------------------------------------
# the universe: many small series against one long one

UNIVERSE_GRANULARITY = "M5"
UNIVERSE_STEP_MS = 300_000
TARGET_UNIVERSE_SHARE = 0.80
TARGET_UNIVERSE_PLAN = 2.0  # the universe's planning against one series' (issue 29)


def child_universe_setup(args: argparse.Namespace) -> dict[str, Any]:
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import SeriesKey

    gpubackfill.keep_freed_memory()
    svc = BackfillService(_settings(args.home))
    total = args.series * args.series_candles
    t0 = time.perf_counter()
    one = generate(INSTRUMENT, GRANULARITY, START_MS, START_MS + total * STEP_MS)
    svc.ingest_table(SeriesKey(INSTRUMENT, GRANULARITY), one)
    del one
    one_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.series):
        t = generate(f"BTC{i:03d}", UNIVERSE_GRANULARITY, START_MS,
                     START_MS + args.series_candles * UNIVERSE_STEP_MS)
        svc.ingest_table(SeriesKey(f"BTC{i:03d}", UNIVERSE_GRANULARITY), t)
    many_s = time.perf_counter() - t0
    svc.store.command(f"OPTIMIZE TABLE {svc.store.db}.candles FINAL")
    rows = {g: n for _, g, n in svc.store.instruments()}
    return {"one_s": one_s, "many_s": many_s, "series": len(svc.store.instruments()) - 1,
            "one_rows": svc.store.series_summary(SeriesKey(INSTRUMENT, GRANULARITY))[0],
            "many_rows": sum(n for i, g, n in svc.store.instruments() if g == UNIVERSE_GRANULARITY),
            "granularities": sorted(rows)}


def child_universe_job(args: argparse.Namespace) -> dict[str, Any]:
    import functools

    from gpubackfill.jobs import plan as plan_mod
    from gpubackfill.service import BackfillService

    gpubackfill.keep_freed_memory()
    if args.mode == "unpacked":
        # The comparison row only: every series in its own chunk.
        plan_mod.plan_job = functools.partial(plan_mod.plan_job, max_segments=1)
    svc = BackfillService(_settings(args.home))
    cs, workers = submit.chunk_size(svc.settings, None, args.workers), args.workers
    res: dict[str, Any] = {"mode": args.mode, "chunk_size": cs, "workers": workers}
    warm = svc.create_job(INSTRUMENT, GRANULARITY, _dt(START_MS),
                          _dt(START_MS + WARMUP_CANDLES * STEP_MS), LABELS,
                          chunk_size=WARMUP_CHUNK, workers=workers, force=True)
    if svc.execute(warm).status != "completed":
        raise RuntimeError(f"warm-up job {warm} failed: {svc.job(warm).model_dump()['last_errors']}")
    # Each job writes into empty label tables, as a first backfill does (a
    # forced job over rows already there deletes them first).
    from gpubackfill.labels import label_set_id, resolve

    _truncate(svc.store, label_set_id(resolve(LABELS)))
    # Past the last candle of either: every candle is in the range.
    end = _dt(START_MS + args.series * args.series_candles * STEP_MS + 86_400_000)
    _settle(svc.store)
    t0 = time.perf_counter()
    if args.mode == "one":
        job = svc.create_job(INSTRUMENT, GRANULARITY, _dt(START_MS), end, LABELS,
                             workers=workers, force=True)
    else:
        job = svc.create_job("*", UNIVERSE_GRANULARITY, _dt(START_MS), end, LABELS,
                             workers=workers, force=True)
    res["plan_s"] = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), _cpu_s()
    run = svc.execute(job)
    res["execute_s"] = time.perf_counter() - t0
    res["execute_cpu_s"] = _cpu_s() - cpu0
    s = svc.job(job).model_dump()
    res.update(status=run.status, n=run.candles, chunks=s["chunks_total"],
               series=len(s["series"]), rows=s["rows_written"],
               series_done=sum(x["status"] == "completed" for x in s["series"]))
    secs = [d for d, _ in svc.state.durations(job)]
    res["chunk_p50_s"] = float(np.median(secs)) if secs else None
    return res


def run_universe(args: argparse.Namespace, home: str) -> None:
    _log(f"universe setup: {args.series} series x {args.series_candles:,} candles "
         f"({UNIVERSE_GRANULARITY}) and one series of {args.series * args.series_candles:,} "
         f"({INSTRUMENT} {GRANULARITY})")
    setup = run_child("usetup", args, home, series=args.series, series_candles=args.series_candles)
    print(f"\n1. Setup: {setup['one_rows']:,} candles of {INSTRUMENT} {GRANULARITY} in "
          f"{setup['one_s']:.1f} s; {setup['series']} series with {setup['many_rows']:,} candles "
          f"in {setup['many_s']:.1f} s (generate + ingest)")
    runs = []
    for mode in ("one", "universe", "unpacked"):
        _log(f"job: {mode}")
        r = run_child("ujob", args, home, series=args.series,
                      series_candles=args.series_candles, mode=mode)
        _log(f"job: {mode}: {r['status']} in {r['execute_s']:.1f} s")
        runs.append(r)
    what = {"one": f"one series ({INSTRUMENT} {GRANULARITY})",
            "universe": f"universe: '*' {UNIVERSE_GRANULARITY} ({args.series} series), packed",
            "unpacked": "universe, one series per chunk (packing off)"}
    rows = [[what[r["mode"]], f"{r['series']:,}", f"{r['chunks']:,}", f"{r['n']:,}",
             f"{r['plan_s']:.2f}", f"{r['execute_s']:.2f}",
             human(_per_min(r["n"], r["plan_s"] + r["execute_s"])),
             f"{r['chunk_p50_s']:.3f}" if r["chunk_p50_s"] else "-",
             f"{r['execute_cpu_s']:.1f}", r["status"]] for r in runs]
    print(f"\n2. Jobs at the default chunk size ({runs[0]['chunk_size']:,}), all three labels, "
          f"force=True, {args.workers} workers (candles/min = candles / (plan + execute))")
    print_table(["job", "series", "chunks", "candles", "plan s", "execute s", "candles/min",
                 "chunk p50 s", "CPU s", "status"], rows)
    one = _per_min(runs[0]["n"], runs[0]["plan_s"] + runs[0]["execute_s"])
    many = _per_min(runs[1]["n"], runs[1]["plan_s"] + runs[1]["execute_s"])
    share = many / one if one else float("nan")
    ok = all(r["status"] == "completed" for r in runs) and runs[1]["series_done"] == args.series
    plan_x = runs[1]["plan_s"] / runs[0]["plan_s"] if runs[0]["plan_s"] else float("nan")
    print(f"\n3. Target: the universe at >= {TARGET_UNIVERSE_SHARE:.0%} of one series' "
          f"candles/min: {share:.0%} -> {'PASS' if ok and share >= TARGET_UNIVERSE_SHARE else 'MISS'}"
          f"{'' if ok else ' (a job did not complete)'}; its planning at <= {TARGET_UNIVERSE_PLAN:.0f}x "
          f"one series': {plan_x:.1f}x -> {'PASS' if plan_x <= TARGET_UNIVERSE_PLAN else 'MISS'}")


# ---------------------------------------------------------------------------
# parent: orchestration and report


def run_child(kind: str, args: argparse.Namespace, home: str, **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--home", home,
           "--candles", str(args.candles), "--workers", str(args.workers),
           "--repeats", str(args.repeats)]
    for k, v in extra.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not False and v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"benchmark subprocess '{kind}' {extra} failed (exit {proc.returncode})")
    out = json.loads(lines[-1][len(RESULT_MARK):])
    out["process_s"] = time.perf_counter() - t0
    return out


def _per_min(candles: int, seconds: float) -> float:
    return candles / seconds * 60 if seconds > 0 else float("nan")


def e2e_rate(r: dict[str, Any]) -> float:
    return _per_min(r["n"], r["plan_s"] + r["execute_s"])


def floor_rate(r: dict[str, Any]) -> float:
    return _per_min(r["floor_candles"], r["floor_s"])


def share(r: dict[str, Any]) -> float:
    """The job's candles/min (plan + execute) as a share of the floor's."""
    return e2e_rate(r) / floor_rate(r)


def seq_share(r: dict[str, Any]) -> float:
    """The headline: the job's candles/min against chDB's sequential floor
    (one statement reading every candle + one inserting every label row)."""
    return e2e_rate(r) / _per_min(r["floor_candles"], r["seq_floor_s"])


# The job's stage record (status()["stages"]) -> the budget's parts.
_BUDGET = {"read": ("load",), "compute": ("fingerprint", "cache check", "validate", "compute"),
           "insert": ("write",)}


def job_budget(stages: dict[str, float], workers: int, wall: float) -> dict[str, float]:
    """Worker-seconds of a job by what they went to, from its own stage
    record: read, compute, insert, the rest of the chunk (lease, slicing),
    record (Redis completions), and idle (workers x wall, less all of that:
    Dask, the driver, pipeline fill and drain)."""
    out = {k: sum(stages.get(n, 0.0) for n in names) for k, names in _BUDGET.items()}
    total = stages.get("total", 0.0)
    out["chunk rest"] = max(total - sum(out.values()), 0.0)
    out["record"] = stages.get("record", 0.0)
    out["idle"] = max(workers * wall - total - out["record"], 0.0)
    out["capacity"] = workers * wall
    return out


def budget_line(r: dict[str, Any]) -> str:
    b = r["budget"]
    cap = b["capacity"] or float("nan")
    parts = ", ".join(f"{k} {b[k]:.3f} s ({100 * b[k] / cap:.0f}%)"
                      for k in ("read", "compute", "insert", "chunk rest", "record", "idle"))
    return (f"budget at {size_name(r['chunk_size'])}: {parts} of {r['workers']} workers x "
            f"{r['execute_s']:.2f} s = {b['capacity']:.2f} worker-s")


def headline_line(r: dict[str, Any]) -> str:
    return (f"headline at {size_name(r['chunk_size'])}: the job at {100 * seq_share(r):.0f}% of chDB's "
            f"sequential floor (plan + execute {r['plan_s'] + r['execute_s']:.2f} s against read "
            f"{r['seq_read_s']:.2f} s + insert {r['seq_write_s']:.2f} s = {r['seq_floor_s']:.2f} s); "
            f"{100 * share(r):.0f}% of the per-chunk floor, {100 * share_grouped(r):.0f}% of the "
            f"grouped floor; CPU: execute {r['execute_cpu_s']:.1f} s against the sequential floor's "
            f"{r['seq_reads'][r['seq_read']][1] + r['seq_writes'][r['seq_write']][1]:.1f} s "
            f"(steadier than wall time on a shared machine)")


def print_headline(runs: list[dict[str, Any]]) -> None:
    print("\n2a. Headline and budget (sequential floor: chDB alone, one statement reading every "
          "candle and one inserting every label row, each timed alone, table 3c; budget: the "
          "job's own stage record, in worker-seconds)")
    for r in runs:
        print("   " + headline_line(r))
        print("   " + budget_line(r))
        if r.get("check_before"):
            (a0, c0), (a1, c1) = r["check_before"], r["check_after"]
            print(f"   machine check around the job at {size_name(r['chunk_size'])} (CPU ms of fixed "
                  f"workloads: in-cache arithmetic, a 1 GB copy): before {a0:.0f} / {c0:.0f}, after "
                  f"{a1:.0f} / {c1:.0f}")


def print_seq_floor(runs: list[dict[str, Any]]) -> None:
    headers = ["chDB alone, one statement for the whole series"]
    for r in runs:
        headers += [f"{size_name(r['chunk_size'])} s", "CPU s", "candles/min"]
    rows = []
    for kind, names in (("seq_reads", SEQ_READS), ("seq_writes", SEQ_WRITES)):
        for name in names:
            row = [("read: " if kind == "seq_reads" else "insert: ") + name]
            for r in runs:
                if name not in r[kind]:
                    row += ["n/a", "", ""]
                    continue
                sec, cpu = r[kind][name]
                chosen = name in (r["seq_read"], r["seq_write"])
                row += [f"{sec:.2f}{' *' if chosen else ''}", f"{cpu:.1f}",
                        human(_per_min(r["floor_candles"], sec))]
            rows.append(row)
    row = ["sequential floor = fastest read + fastest insert"]
    for r in runs:
        row += [f"{r['seq_floor_s']:.2f}", "", human(_per_min(r["floor_candles"], r["seq_floor_s"]))]
    rows.append(row)
    print_table(headers, rows, title="3c. The sequential floor: every candle read in one statement, "
                                     "every label row inserted in one (from rows prepared before "
                                     "the clock starts), each timed alone (* = fastest)")


def share_1conn(r: dict[str, Any]) -> float:
    """The same against the floor on one connection (chunk by chunk)."""
    return e2e_rate(r) / _per_min(r["floor_candles"], r["floor_1conn_s"])


def share_grouped(r: dict[str, Any]) -> float:
    """The same against chDB reading and inserting a task's chunks at once."""
    return e2e_rate(r) / _per_min(r["floor_candles"], r.get("floor_grouped_s", r["floor_s"]))


def median_round(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose share of the floor is the median (the lower of the
    two middle ones for an even count): the one the detail tables show."""
    return sorted(rs, key=seq_share)[(len(rs) - 1) // 2]


def print_rounds(rounds: dict[int, list[dict[str, Any]]]) -> None:
    rows = []
    for cs, rs in rounds.items():
        shares = [share(r) for r in rs]
        rows.append([f"{cs:,}"] + [f"{100 * x:.0f}% ({r['plan_s'] + r['execute_s']:.2f} / {r['floor_s']:.2f} s; "
                                   f"1-conn {100 * share_1conn(r):.0f}%; grouped {100 * share_grouped(r):.0f}%)"
                                   for x, r in zip(shares, rs)]
                    + [f"{100 * statistics.median(shares):.0f}%", f"{100 * min(shares):.0f}%",
                       f"{100 * statistics.median(share_1conn(r) for r in rs):.0f}%",
                       f"{100 * statistics.median(share_grouped(r) for r in rs):.0f}%"])
    n = max(len(rs) for rs in rounds.values())
    print_table(["chunk size"] + [f"round {i + 1}: share (job / floor s)" for i in range(n)]
                + ["median", "min", "median, 1-conn floor", "median, grouped floor"],
                rows, title="2b. Every round: each a fresh process with its own job and floor, "
                            "one chunk size after another (tables 2, 3 and 3b show the median round)")


def ok_run(r: dict[str, Any]) -> bool:
    return r["status"] == "completed" and r["candles_done"] == r["n"]


def print_setup(s: dict[str, Any]) -> None:
    n = s["n"]
    rows = [
        ["generate (synthetic, in memory)", f"{s['generate_s']:.2f}", human(_per_min(n, s["generate_s"]))],
        ["ingest_table (validate + insert into chDB)", f"{s['ingest_s']:.2f}",
         human(_per_min(n, s["ingest_s"]))],
        ["OPTIMIZE TABLE candles FINAL (not part of ingest)", f"{s['optimize_s']:.2f}", ""],
        ["compute floor: compute_labels, all three, " +
         ("whole series" if s["compute_n"] == n else f"first {s['compute_n']:,} candles"),
         f"{s['compute_s']:.3f}", human(_per_min(s["compute_n"], s["compute_s"]))],
    ]
    if s["setup_batch"] < n:
        rows[0][0] = f"generate (synthetic, {s['setup_batch']:,} at a time)"
        rows[1][0] = f"ingest_table ({s['setup_batch']:,} at a time)"
    print_table(["step", "seconds", "candles/min"], rows,
                title=f"1. Setup: {n:,} candles ({_iso(s['first'])} .. {_iso(s['last'])}); "
                      f"{s['inserted']:,} inserted, {s['rejected']} rejected, {s['rows']:,} in chDB "
                      f"(compute: median of {s['repeats']})")


def print_runs(runs: list[dict[str, Any]], n_rounds: int = 1) -> None:
    rows = []
    for r in runs:
        e2e = e2e_rate(r)
        rows.append([f"{r['chunk_size']:,}", f"{r['chunks']:,}", f"{r['plan_s']:.2f}",
                     f"{r['execute_s']:.2f}", human(e2e) + ("" if ok_run(r) else " (FAILED)"),
                     human(floor_rate(r)), f"{100 * share(r):.0f}%", f"{100 * share_1conn(r):.0f}%",
                     f"{r['chunk_p50_s']:.3f}" if r["chunk_p50_s"] is not None else "n/a",
                     f"{r['chunk_max_s']:.3f}" if r["chunk_max_s"] is not None else "n/a",
                     mib(r["rss_peak"])])
    print_table(["chunk size", "chunks", "plan s", "execute s", "candles/min",
                 "I/O floor candles/min", "% of floor", "% of 1-conn floor", "chunk p50 s", "chunk max s",
                 "peak RSS MiB"], rows,
                title="2. Backfill jobs, all three labels over the whole series, default settings "
                      + (f"(the median of {n_rounds} rounds) " if n_rounds > 1 else "") +
                      "but the chunk size (candles/min = candles / (plan + execute); floor = candles / "
                      "(chDB's fastest read + its fastest insert of every chunk, table 3b, threads "
                      "included); 1-conn floor: the same over the methods on one connection, "
                      "chunk by chunk)")
    for r in runs:
        if not ok_run(r):
            print(f"   chunk size {r['chunk_size']:,}: job ended {r['status']}, "
                  f"{r['candles_done']:,} of {r['n']:,} candles; errors: {r.get('errors')}")
    capped = [r for r in runs if r["chunk_durations"] < r["chunks"]]
    if capped:
        print("   chunk p50/max: from the job's Redis durations (state.durations), which keep the "
              "most recent chunks only: " + ", ".join(
                  f"{r['chunk_durations']:,} of {r['chunks']:,} at {size_name(r['chunk_size'])}"
                  for r in capped) + "; the sum of chunk seconds below covers every chunk")

    rows = []
    for r in runs:
        util = r["chunk_sum_s"] / (r["workers"] * r["execute_s"]) if r["execute_s"] else 0.0
        rows.append([f"{r['chunk_size']:,}", human(_per_min(r["n"], r["execute_s"])),
                     f"{r['floor_s']:.2f}", f"{r['execute_cpu_s']:.1f}",
                     f"{r['chunk_sum_s']:.1f}", f"{100 * util:.0f}%",
                     mib(r["rss_before"]), mib(r["rss_peak"]),
                     mib(r["rss_peak"] - r["rss_before"]),
                     mib(r["vmhwm"]) if r.get("vmhwm") else "n/a", f"{r['rss_samples']:,}",
                     f"{r['warmup_s']:.1f}", f"{r['process_s']:.1f}"])
    print_table(["chunk size", "execute-only candles/min", "floor s",
                 "execute CPU s", "sum of chunk s", "worker busy", "RSS before MiB", "peak RSS MiB",
                 "increase MiB", "VmHWM MiB", "RSS samples", "warm-up s", "process s"], rows,
                title="   Details: worker busy = sum of chunk seconds / (workers x execute s); "
                      "CPU s = user + system seconds of the job's process (chDB included); "
                      "peak RSS = the kernel's high-water mark since the job began (VmHWM), "
                      "or RSS sampled every 5 ms where it cannot be reset; with VmHWM, RSS is "
                      "sampled only every 100 ms, as a cross-check that costs the job nothing")


STAGES = [
    ("load", "load (SQL + Arrow, with halo)"),
    ("fingerprint", "input fingerprint (xxh3-128)"),
    ("to_series + validate", "to_series + validate"),
    ("compute", "compute_series + incomplete-row count"),
    ("write (total)", "write_labels (total)"),
    ("write: count query", "  count query (rows present?)"),
    ("write: delete", "  DELETE of rows present"),
    ("write: insert labels", "  insert label rows"),
    ("write: insert manifest", "  insert label_chunks row"),
    ("write: other", "  lock wait + Arrow prep (rest)"),
    ("chunk: other", "rest of the chunk"),
    ("chunk", "chunk total (as run_chunk times it)"),
    ("redis: complete", "Redis complete (after the chunk)"),
    ("redis: claim (driver)", "Redis claim (driver thread)"),
]


def _stage_table(runs: list[dict[str, Any]], key: str) -> dict[int, dict[str, float]]:
    """Mean milliseconds per chunk of each stage, per chunk size."""
    out: dict[int, dict[str, float]] = {}
    for r in runs:
        st = {k: v[0] for k, v in r[key].items()}
        chunks = r["chunks"]
        if "write (total)" in st:
            inner = sum(st.get(k, 0.0) for k in ("write: count query", "write: delete",
                                                 "write: insert labels", "write: insert manifest"))
            st["write: other"] = st["write (total)"] - inner
        if key == "stages":
            st["chunk"] = r["chunk_sum_s"]
            st["chunk: other"] = r["chunk_sum_s"] - sum(
                st.get(k, 0.0) for k in ("load", "fingerprint", "to_series + validate", "compute",
                                         "write (total)"))
        out[r["chunk_size"]] = {k: 1000 * v / max(chunks, 1) for k, v in st.items()}
    return out


def print_stages(runs: list[dict[str, Any]]) -> None:
    job = _stage_table(runs, "stages")
    headers = ["stage (ms per chunk, summed over worker threads)"]
    for r in runs:
        headers += [f"{size_name(r['chunk_size'])} ms", "%"]
    rows = []
    for k, label in STAGES:
        row = [label]
        for r in runs:
            ms = job[r["chunk_size"]]
            total = ms.get("chunk", 0.0)
            if k in ms:
                row += [f"{ms[k]:,.1f}", f"{100 * ms[k] / total:.0f}%" if total and
                        not k.startswith("redis") and k != "chunk" else ""]
            else:
                row += ["n/a", ""]
        rows.append(row)
    print_table(headers, rows,
                title="3. Where the time goes inside a chunk (the chunk's steps as the job records "
                      "them; the store's calls wrapped in the job's process; % of the chunk total)")
    missing = sorted({m for r in runs for m in r.get("timers_missing", [])})
    if missing:
        print(f"   not found in the engine (not timed): {', '.join(missing)}")


def print_floor(runs: list[dict[str, Any]]) -> None:
    headers = ["chDB alone (chunks in turn on one connection; N threads: --workers connections)"]
    for r in runs:
        headers += [f"{size_name(r['chunk_size'])} s", "CPU s", "candles/min"]
    rows = []
    for kind, names in (("floor_reads", READS), ("floor_writes", WRITES)):
        best = {r["chunk_size"]: min(v[0] for k, v in r[kind].items() if not at_once(k))
                for r in runs}
        for name in names:
            row = [("read: " if kind == "floor_reads" else "insert: ") + name]
            for r in runs:
                sec, cpu = r[kind][name]
                mark = " *" if sec == best[r["chunk_size"]] else ""
                row += [f"{sec:.2f}{mark}", f"{cpu:.1f}", human(_per_min(r["floor_candles"], sec))]
            rows.append(row)
    row = ["floor = fastest read + fastest insert, a chunk a statement"]
    for r in runs:
        row += [f"{r['floor_s']:.2f}", "", human(floor_rate(r))]
    rows.append(row)
    row = ["grouped floor = the same, a task's chunks at once allowed"]
    for r in runs:
        g = r.get("floor_grouped_s", r["floor_s"])
        row += [f"{g:.2f}", "", human(_per_min(r["floor_candles"], g))]
    rows.append(row)
    print_table(headers, rows, title="3b. The floor: chDB's read and insert methods over the same "
                                     "chunk plan, nothing of the engine in between (* = fastest)")


def print_verify(r: dict[str, Any] | None) -> bool | None:
    if r is None or "verify" not in r:
        print("\n4. Correctness: not checked (no run)")
        return None
    v, n = r["verify"], r["n"]
    ok = (v["export_rows"] == n and v["count"] == n and v["uniq"] == n and v["first_ok"]
          and v["last_ok"] and v["sorted_unique"])
    rows = [
        ["candles in the series", f"{n:,}"],
        ["export_file rows (Parquet, streamed)", f"{v['export_rows']:,} (in {r['export_s']:.2f} s)"],
        ["label_counts count()", f"{v['count']:,}"],
        ["label_counts uniqExact(ts)", f"{v['uniq']:,}"],
        ["export ts: first and last candle, strictly increasing",
         f"{v['first_ok']}, {v['last_ok']}, {v['sorted_unique']}"],
        ["result", "PASS" if ok else "MISS"],
    ]
    print_table(["", "value"], rows,
                title=f"4. Correctness after the {r['chunk_size']:,}-candle-chunk job")
    return ok


def print_summary(args: argparse.Namespace, runs: list[dict[str, Any]],
                  rounds: dict[int, list[dict[str, Any]]], verified: bool | None) -> None:
    q = args.quick
    good = [r for r in runs if ok_run(r)]
    rows = []
    if good:
        best = max(good, key=e2e_rate)
        bs = size_name(best["chunk_size"])
        rate = e2e_rate(best)
        rows += [
            [f"end-to-end candles/min, best chunk size ({bs})", f">= {human(TARGET_PER_MIN)}",
             human(rate), verdict(rate >= TARGET_PER_MIN, q)],
            [f"peak RSS at {bs}", f"<= {TARGET_RSS / 1e9:g} GB ({mib(TARGET_RSS)} MiB)",
             f"{mib(best['rss_peak'])} MiB", verdict(best["rss_peak"] <= TARGET_RSS, q)],
        ]
    else:
        rows.append(["end-to-end candles/min", f">= {human(TARGET_PER_MIN)}", "no job completed",
                     verdict(False, q)])
    default = submit.chunk_size(_settings(args.home), None, args.workers, args.candles)
    for cs, goal, stretch in ((default, TARGET_SEQ_SHARE, STRETCH_SEQ_SHARE),
                              (SMALL_CHUNK, TARGET_SEQ_SMALL_SHARE, None)):
        label = f"headline: share of the sequential floor at {size_name(cs)}" + (
            " (the default)" if cs == default else "")
        want = f">= {100 * goal:.0f}%" + (f" (stretch {100 * stretch:.0f}%)" if stretch else "")
        rs = [r for r in rounds.get(cs, []) if ok_run(r)]
        if not rs:
            rows.append([label, want, "not run", verdict(None, q, f"{size_name(cs)} not run")])
            continue
        shares = [seq_share(r) for r in rs]
        mid = statistics.median(shares)
        got = f"{100 * mid:.0f}%" + (f" (median of {len(rs)}; min {100 * min(shares):.0f}%)"
                                     if len(rs) > 1 else "")
        result = verdict(mid >= goal, q)
        if stretch and mid >= stretch and not q:
            result += ", stretch met"
        rows.append([label, want, got, result])
    for cs, goal, stretch, label in ((default, TARGET_DEFAULT_SHARE, STRETCH_DEFAULT_SHARE,
                                      f"share of the floor at the default chunk size ({size_name(default)})"),
                                     (SMALL_CHUNK, TARGET_SMALL_SHARE, None,
                                      f"share of the floor at {size_name(SMALL_CHUNK)}")):
        rs = [r for r in rounds.get(cs, []) if ok_run(r)]
        want = f">= {100 * goal:.0f}%" + (f" (stretch {100 * stretch:.0f}%)" if stretch else "")
        if not rs:
            rows.append([label, want, "not run", verdict(None, q, f"{size_name(cs)} not run")])
            continue
        shares = [share(r) for r in rs]
        mid = statistics.median(shares)
        got = f"{100 * mid:.0f}%" + (f" (median of {len(rs)}; min {100 * min(shares):.0f}%)" if len(rs) > 1 else "")
        got += (f"; {100 * statistics.median(share_1conn(r) for r in rs):.0f}% of the 1-conn floor, "
                f"{100 * statistics.median(share_grouped(r) for r in rs):.0f}% of the grouped floor")
        result = verdict(mid >= goal, q)
        if stretch and mid >= stretch and not q:
            result += ", stretch met"
        rows.append([label, want, got, result])
    small = next((r for r in good if r["chunk_size"] == SMALL_CHUNK), None)
    if small is not None:
        rows.append([f"median chunk time at {size_name(SMALL_CHUNK)} candles",
                     f"< {TARGET_CHUNK_S:g} s", f"{small['chunk_p50_s']:.3f} s",
                     verdict(small["chunk_p50_s"] < TARGET_CHUNK_S, q)])
    else:
        rows.append([f"median chunk time at {size_name(SMALL_CHUNK)} candles",
                     f"< {TARGET_CHUNK_S:g} s", "not run", verdict(None, q, "10k not run")])
    rows.append(["correctness: export rows = count = uniqExact = candles", "equal",
                 {True: "equal", False: "differ", None: "not checked"}[verified],
                 "n/a" if verified is None else ("PASS" if verified else "MISS")])
    print_table(["target", "goal", "measured", "result"], rows, title="5. Targets")

    fits = [r for r in good if r["rss_peak"] <= TARGET_RSS]
    if fits:
        rec = max(fits, key=e2e_rate)
        print(f"\nrecommended default chunk size: {rec['chunk_size']:,} "
              f"(fastest whose peak RSS is within {TARGET_RSS / 1e9:g} GB: "
              f"{human(e2e_rate(rec))} candles/min, {mib(rec['rss_peak'])} MiB)"
              f"{' -- quick run, not representative' if q else ''}")
    else:
        print(f"\nrecommended default chunk size: none (no completed run within "
              f"{TARGET_RSS / 1e9:g} GB)")


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candles", default="1e7", help="candles in the series (default 1e7)")
    p.add_argument("--chunk-sizes", default="10000,100000,1000000",
                   help="comma-separated chunk sizes in candles (default 10000,100000,1000000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="job workers, and floor threads (default: os.cpu_count())")
    p.add_argument("--repeats", type=int, default=3, help="compute_labels calls (median)")
    p.add_argument("--rounds", type=int, default=1,
                   help="jobs (each with its floor) per chunk size; the median share is judged "
                        "(default 1; the numbers move ~10%% between runs on a shared 2-core VM)")
    p.add_argument("--quick", action="store_true",
                   help="small run (300k candles, chunk sizes 10k and 100k); targets not judged")
    p.add_argument("--universe", action="store_true",
                   help="many small series in one job against one long series (see 6.)")
    p.add_argument("--series", type=int, default=300, help="--universe: series (default 300)")
    p.add_argument("--series-candles", default="5e4",
                   help="--universe: candles per series (default 5e4)")
    p.add_argument("--child", choices=("setup", "job", "usetup", "ujob"), help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and args.child is None:
        args.candles, args.chunk_sizes = "3e5", "10000,100000"
    try:
        args.candles = int(float(args.candles))
        args.series_candles = int(float(args.series_candles))
        if isinstance(args.chunk_sizes, str):
            args.chunk_sizes = [int(float(s)) for s in args.chunk_sizes.split(",") if s.strip()]
    except ValueError as exc:
        p.error(str(exc))
    if args.candles < WARMUP_CANDLES:
        p.error(f"--candles must be >= {WARMUP_CANDLES}")
    if not args.chunk_sizes or min(args.chunk_sizes) < 1:
        p.error("--chunk-sizes needs positive sizes")
    if args.workers < 1 or args.repeats < 1 or args.rounds < 1:
        p.error("--workers, --repeats and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        res = {"setup": child_setup, "job": child_job, "usetup": child_universe_setup,
               "ujob": child_universe_job}[args.child](args)
        res["repeats"] = args.repeats
        print(RESULT_MARK + json.dumps(res), flush=True)
        return 0

    t_start = time.perf_counter()
    home = args.home = tempfile.mkdtemp(prefix="gpubackfill-bench-")
    try:
        print_header(args)
        if args.universe:
            run_universe(args, home)
        else:
            _log(f"setup: generating and ingesting {args.candles:,} candles in {home}")
            setup = run_child("setup", args, home)
            print_setup(setup)
            sys.stdout.flush()
            verify_size = VERIFY_CHUNK if VERIFY_CHUNK in args.chunk_sizes else args.chunk_sizes[-1]
            rounds: dict[int, list[dict[str, Any]]] = {cs: [] for cs in args.chunk_sizes}
            for rnd in range(1, args.rounds + 1):
                for cs in args.chunk_sizes:
                    tag = f" (round {rnd} of {args.rounds})" if args.rounds > 1 else ""
                    _log(f"chunk size {cs:,}: job + I/O floor{tag}")
                    r = run_child("job", args, home, chunk_size=cs, verify=cs == verify_size and rnd == 1)
                    _log(f"chunk size {cs:,}: execute {r['execute_s']:.1f} s, floor {r['floor_s']:.1f} s, "
                         f"{100 * share(r):.0f}% of the floor, {100 * seq_share(r):.0f}% of the "
                         f"sequential floor ({r['seq_floor_s']:.1f} s)")
                    rounds[cs].append(r)
            runs = [median_round(rs) for rs in rounds.values()]
            print_runs(runs, args.rounds)
            if args.rounds > 1:
                print_rounds(rounds)
            print_headline(runs)
            print_stages(runs)
            print_floor(runs)
            print_seq_floor(runs)
            verified = print_verify(next((r for rs in rounds.values() for r in rs if "verify" in r), None))
            print_summary(args, runs, rounds, verified)
    finally:
        from gpubackfill.storage.redis_server import stop_server

        stop_server(_settings(home).redis_dir)
        shutil.rmtree(home, ignore_errors=True)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.1f} s; "
          f"load avg at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
