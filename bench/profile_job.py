"""Where a default backfill's time goes: one job, profiled from outside the engine.

Sets up a synthetic BTCUSD M1 series of ``--candles`` candles in a fresh
temporary ``GPUBACKFILL_HOME`` (as ``bench/backfill.py`` does), runs a warm-up
job, empties the label tables, and runs one job with all three labels at the
default chunk size (or ``--chunk-size``) on ``--workers`` workers.  chDB is
opened with its ``query_log`` and ``part_log`` on (a config file passed to
``chdb.connect``: the engine's own settings are unchanged), and it prints:

1. the job's budget from its own stage record (worker-seconds);
2. CPU seconds per thread group of the process over the job (from
   /proc/self/task: chDB's query and merge threads, Dask's workers, the
   driver), next to the job's wall time;
3. chDB's ``system.query_log`` for the job's statements: per kind (candle
   reads, label inserts, manifest inserts, the rest), count, summed wall
   time, user + system CPU, peak threads; and the timeline of the reads
   and inserts (start and end from the job's start), which shows the
   pipeline filling and draining;
4. ``system.part_log``: parts written and merges during the job.

Run from the repository root::

    python bench/profile_job.py --candles 1e7 --workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import report as _report  # bench/report.py

import gpubackfill

START_MS = 1_104_537_600_000
STEP_MS = 60_000
LOG_CONFIG = """<clickhouse>
<query_log><database>system</database><table>query_log</table>
<flush_interval_milliseconds>600000</flush_interval_milliseconds></query_log>
<part_log><database>system</database><table>part_log</table>
<flush_interval_milliseconds>600000</flush_interval_milliseconds></part_log>
</clickhouse>"""


def _threads() -> dict[int, tuple[str, float]]:
    """tid -> (name, user + system CPU seconds) of this process's threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _group(name: str) -> str:
    """Thread names to groups (chDB names its pool threads; Python's are
    all the process's name)."""
    for prefix, group in (("QueryPipelineEx", "chDB query pipeline"), ("QueryPullPipeEx", "chDB query pipeline"),
                          ("MergeMutate", "chDB merges"), ("BgSchPool", "chDB background"),
                          ("Fetch", "chDB background"), ("Common", "chDB background")):
        if name.startswith(prefix):
            return group
    return name


def _time_stages_on_cpu() -> tuple[dict[str, float], dict[str, int]]:
    """The chunk's steps (``chunk._Stages``) timed in the worker thread's
    CPU seconds as well, and counted in its minor page faults: seconds and
    faults per step, summed over chunks."""
    from gpubackfill.engine import chunk

    spent: dict[str, float] = defaultdict(float)
    faulted: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

    class Stages(chunk._Stages):
        def __init__(self) -> None:
            super().__init__()
            self._cpu = time.thread_time()
            self._faults = faults()

        def lap(self, name: str) -> None:
            super().lap(name)
            now, n = time.thread_time(), faults()
            with lock:
                spent[name] += now - self._cpu
                faulted[name] += n - self._faults
            self._cpu, self._faults = now, n

    chunk._Stages = Stages  # type: ignore[misc]
    return spent, faulted


def setup(svc, n: int, labels: list, workers: int) -> str:
    """A BTCUSD M1 series of ``n`` synthetic candles (10M at a time), merged
    into one part, and a small warm-up job (the Dask cluster, the numba
    cache, chDB); the labels' set id."""
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.labels import label_set_id, resolve
    from gpubackfill.storage.clickhouse_store import SeriesKey

    for first in range(0, n, 10_000_000):
        t = generate("BTCUSD", "M1", START_MS + first * STEP_MS,
                     START_MS + min(first + 10_000_000, n) * STEP_MS)
        svc.ingest_table(SeriesKey("BTCUSD", "M1"), t)
        del t
    svc.store.command(f"OPTIMIZE TABLE {svc.store.db}.candles FINAL")
    warm = svc.create_job("BTCUSD", "M1", _dt(START_MS), _dt(START_MS + 3000 * STEP_MS), labels,
                          chunk_size=1000, workers=workers, force=True)
    svc.execute(warm)
    return label_set_id(resolve(labels))


def empty_labels(store, set_id: str) -> None:
    store.command(f"TRUNCATE TABLE {store.db}.labels_{set_id}")
    store.command(f"TRUNCATE TABLE {store.db}.label_chunks")


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candles", default="1e7")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--chunk-size", type=int, default=None, help="default: the engine's choice")
    p.add_argument("--dask-ticks", choices=("engine", "dask"), default="engine",
                   help="event-loop ticks: the engine's (1 s) or Dask's default (20 ms), to compare")
    args = p.parse_args()
    if args.dask_ticks == "dask":
        from gpubackfill.engine import cluster

        cluster.slow_ticks = lambda: None
    n = int(float(args.candles))
    home = tempfile.mkdtemp(prefix="gpubackfill-profile-")
    cfg = Path(home) / "chdb-logs.xml"
    cfg.write_text(LOG_CONFIG)
    import chdb

    connect = chdb.connect
    chdb.connect = lambda path=":memory:", *a, **k: connect(  # type: ignore[assignment]
        f"{path}{'&' if '?' in path else '?'}config-file={cfg}", *a, **k)

    from gpubackfill.config import Settings
    from gpubackfill.engine import submit
    from gpubackfill.labels import DEFAULT_LABELS
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.redis_server import stop_server

    gpubackfill.keep_freed_memory()
    thread_cpu, thread_faults = _time_stages_on_cpu()
    settings = Settings.from_env({"GPUBACKFILL_HOME": home}, dotenv=False)
    try:
        svc = BackfillService(settings)
        store = svc.store
        labels = list(DEFAULT_LABELS)
        end = _dt(START_MS + n * STEP_MS)
        set_id = setup(svc, n, labels, args.workers)
        empty_labels(store, set_id)
        store.command("SYSTEM FLUSH LOGS")
        thread_cpu.clear()
        thread_faults.clear()
        os.sync()
        cs = args.chunk_size or submit.chunk_size(settings, None, args.workers, n)
        print(f"command : {' '.join(sys.argv)}")
        print(f"machine : {_report.cpu_model()}; {os.cpu_count()} cores; load {_report.load_average()}")
        print(f"job     : BTCUSD M1, {n:,} candles, all three labels, chunk size {cs:,}, "
              f"{args.workers} workers; Dask event-loop ticks: {args.dask_ticks}")
        before = _threads()
        wall0, cpu0 = time.time(), os.times()
        t0 = time.perf_counter()
        job = svc.create_job("BTCUSD", "M1", _dt(START_MS), end, labels, chunk_size=args.chunk_size,
                             workers=args.workers)
        plan_s = time.perf_counter() - t0
        run = svc.execute(job)
        wall = time.perf_counter() - t0
        cpu1 = os.times()
        after = _threads()
        status = svc.job(job).model_dump()
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        print(f"result  : {run.status}, {run.candles:,} candles; plan {plan_s:.2f} s, plan + execute "
              f"{wall:.2f} s; process CPU {cpu:.2f} s ({cpu / wall:.2f} cores); load at end "
              f"{_report.load_average()}")

        st = status["stages"]
        cap = args.workers * (wall - plan_s)
        print(f"\n1. The job's stage record (worker-seconds; capacity {args.workers} x "
              f"{wall - plan_s:.2f} s = {cap:.2f})")
        for k, v in st.items():
            print(f"   {k:<12} {v:8.3f} s  {100 * v / cap:5.1f}%")

        py = {t.native_id: t.name for t in threading.enumerate()}
        print("\n   CPU seconds of the worker threads themselves in each step (chDB's own "
              "threads are not in these):")
        print("   " + ", ".join(f"{k} {v:.2f} s" for k, v in thread_cpu.items()))
        print("   and the minor page faults each step took in those threads (4 KiB each, where no huge page):")
        print("   " + ", ".join(f"{k} {v:,}" for k, v in thread_faults.items()))
        groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for tid, (name, secs) in after.items():
            was = before.get(tid)
            spent = secs - (was[1] if was and was[0] == name else 0.0)
            if spent > 0.005:
                g = groups[_group(py[tid].rstrip("0123456789-_") if tid in py else name)]
                g[0] += spent
                g[1] += 1
        print(f"\n2. CPU seconds per thread group over the job (threads that ended during it are "
              f"not counted; process total {cpu:.2f} s)")
        for name, (secs, count) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
            print(f"   {name:<28} {secs:7.2f} s  ({count} threads)")

        store.command("SYSTEM FLUSH LOGS")
        since = f"fromUnixTimestamp64Micro({int(wall0 * 1e6)})"
        q = store.rows(f"""
            SELECT multiIf(query ILIKE 'SELECT%FROM {store.db}.candles%', 'read candles',
                           query ILIKE 'INSERT INTO {store.db}.labels_%', 'insert labels',
                           query ILIKE 'INSERT INTO {store.db}.label_chunks%', 'insert manifest',
                           'other') AS kind,
                   count(), sum(query_duration_ms) / 1e3, sum(ProfileEvents['UserTimeMicroseconds']
                   + ProfileEvents['SystemTimeMicroseconds']) / 1e6, max(peak_threads_usage),
                   sum(read_rows), sum(written_rows)
            FROM system.query_log
            WHERE type = 'QueryFinish' AND event_time_microseconds >= {since}
            GROUP BY kind ORDER BY kind""")
        print("\n3. chDB's query_log over the job, per kind of statement")
        print(f"   {'kind':<16} {'count':>6} {'wall s':>8} {'CPU s':>8} {'threads':>8} "
              f"{'rows read':>12} {'rows written':>13}")
        for kind, count, secs, cpu_s, threads, rr, wr in q:
            print(f"   {kind:<16} {count:6d} {secs:8.2f} {cpu_s:8.2f} {threads:8d} {rr:12,d} {wr:13,d}")
        tl = store.rows(f"""
            SELECT multiIf(query ILIKE 'SELECT%FROM {store.db}.candles%', 'read',
                           query ILIKE 'INSERT INTO {store.db}.labels_%', 'insert', 'x') AS kind,
                   (toUnixTimestamp64Micro(query_start_time_microseconds) - {int(wall0 * 1e6)}) / 1e6,
                   query_duration_ms / 1e3, read_rows, written_rows,
                   ProfileEvents['UserTimeMicroseconds'] / 1e6,
                   ProfileEvents['SystemTimeMicroseconds'] / 1e6, ProfileEvents['SoftPageFaults'],
                   substring(query, 1, 60)
            FROM system.query_log
            WHERE type = 'QueryFinish' AND event_time_microseconds >= {since} AND kind != 'x'
            ORDER BY 2""")
        print(f"\n   timeline (s from the job's start; {wall:.2f} s in all): kind, start, end, "
              f"rows, user and system CPU s, soft page faults, statement")
        for kind, start, secs, rr, wr, user, system, faults, text in tl:
            print(f"   {kind:<7} {start:7.2f} {start + secs:7.2f}  {rr if kind == 'read' else wr:>11,} "
                  f"{user:6.2f} {system:6.2f} {faults:>8,}  {' '.join(text.split())[:40]}")
        parts = store.rows(f"""
            SELECT event_type, table, count(), sum(duration_ms) / 1e3, sum(rows)
            FROM system.part_log WHERE event_time_microseconds >= {since}
            GROUP BY event_type, table ORDER BY table, event_type""")
        print("\n4. part_log over the job: event, table, parts, seconds, rows")
        for ev, table, count, secs, rows in parts:
            print(f"   {ev:<14} {table:<28} {count:5d} {secs:8.2f} {rows:12,d}")
    finally:
        stop_server(settings.redis_dir)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
