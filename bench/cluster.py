"""The same backfill through the in-process default and through a cluster of
worker processes over ClickHouse's HTTP protocol, side by side.

Two modes, each in a fresh subprocess with a fresh temporary
``GPUBACKFILL_HOME`` (deleted at the end) and the bundled redis-server:

* ``in-process``: the default a user gets with no settings: the embedded
  chDB in the job's process, an in-process Dask cluster of ``--workers``
  threads;
* ``threads/HTTP``: the same threads, in the job's process, but reading
  and writing over HTTP (below): what the protocol and the server stand-in
  cost, apart from the processes;
* ``processes/HTTP``: ``CLICKHOUSE_URL`` pointing at ``tests/chhttp.py``
  (ClickHouse's HTTP interface in front of chDB, in a process of its own:
  no ClickHouse server binary is available here) and
  ``DASK_SCHEDULER_ADDRESS`` pointing at a ``LocalCluster`` of ``--workers``
  single-threaded worker processes, started before the clock (a deployed
  cluster is already up).  Every chunk's candles and label rows cross HTTP
  and a process boundary.

Data: two synthetic M1 series (BTCUSD, ETHUSD: 24/7, so N bars span N
minutes) of ``--candles``/2 bars each, ingested through the service and
merged (``OPTIMIZE ... FINAL``) before any measurement.  A warm-up job per
mode loads the numba cache in every worker and opens every connection.

Per mode, ``--repeats`` times each (label tables emptied before each run):

* ``1 job``: one series, ``create_job`` + ``execute``;
* ``2 jobs``: both series as two jobs, queued and run at once by the
  service's scheduler (``serve``'s ``Scheduler``, two jobs at a time).

Reported: wall seconds (planning included), candles per minute, and CPU
seconds by process: the job's own process (driver, Dask scheduler, and in
the default the chunks and chDB too), the worker processes, the ClickHouse
HTTP server, redis-server; and candles per CPU-minute over all of them.
Every run is checked: label rows == candles == distinct keys (no FINAL).
In the HTTP modes, the statements each chunk sent (the server's query
log); at the end, the bytes a label row and a candle take on disk.

    python bench/cluster.py                         # 2M candles, 2 workers, 2 repeats
    python bench/cluster.py --candles 4e6 --chunk-size 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERIES = ("BTCUSD", "ETHUSD")
GRANULARITY = "M1"
STEP_MS = 60_000
START_MS = 1_104_537_600_000   # 2005-01-01T00:00:00Z
WARMUP_CANDLES = 3_000
MODES = ("in-process", "threads/HTTP", "processes/HTTP")


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _lines(path: Path | None) -> int:
    """Statements the ClickHouse HTTP server has run (its query log, a line each)."""
    if path is None or not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _dt(ms: int):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One mode: setup, warm-up, the measured runs; a JSON-able result."""
    import dask

    from gpubackfill.candles.synthetic import generate
    from gpubackfill.config import Settings
    from gpubackfill.engine.cluster import PROFILER_SETTING, TICK, TICK_SETTING
    from gpubackfill.serve.scheduler import Scheduler
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import SeriesKey
    from gpubackfill.storage.redis_server import server_pid

    home = Path(args.home)
    env = {"GPUBACKFILL_HOME": str(home)}
    extra_pids: dict[str, list[int]] = {}
    query_log: Path | None = None
    server = cluster = client = None
    if args.mode.endswith("/HTTP"):
        sys.path.insert(0, str(ROOT / "tests"))
        from chhttp import ClickHouseHTTPServer
        from distributed import Client, LocalCluster

        query_log = home / "statements.log"
        server = ClickHouseHTTPServer(str(home / "ch-server"), tmp_dir=str(home),
                                      env={"CHHTTP_QUERY_LOG": str(query_log)})
        server.start()
        with dask.config.set({PROFILER_SETTING: False, TICK_SETTING: TICK}):
            if args.mode == "processes/HTTP":
                cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
            else:
                cluster = LocalCluster(n_workers=1, threads_per_worker=args.workers, processes=False,
                                       dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
        env.update(CLICKHOUSE_URL=server.url, DASK_SCHEDULER_ADDRESS=cluster.scheduler_address)
        assert server.process is not None
        extra_pids["ClickHouse HTTP"] = [server.process.pid]
    settings = Settings.from_env(env, dotenv=False)
    svc = BackfillService(settings)
    per = args.candles // len(SERIES)
    t0 = time.perf_counter()
    for inst in SERIES:
        svc.ingest_table(SeriesKey(inst, GRANULARITY),
                         generate(inst, GRANULARITY, START_MS, START_MS + per * STEP_MS))
    svc.store.command(f"OPTIMIZE TABLE {svc.store.db}.candles FINAL")
    setup_s = time.perf_counter() - t0
    redis = server_pid(settings.redis_dir)
    extra_pids["redis-server"] = [redis] if redis else []
    chunk = args.chunk_size or None

    def workers() -> list[int]:
        if client is None:
            return []
        return [p for p in client.run(os.getpid).values() if p != os.getpid()]

    def job(inst: str, n: int) -> str:
        return svc.create_job(inst, GRANULARITY, _dt(START_MS), _dt(START_MS + n * STEP_MS),
                              chunk_size=chunk, workers=args.workers)

    def empty() -> None:
        for name in [r[0] for r in svc.store.rows(
                "SELECT name FROM system.tables WHERE database = {d:String} AND "
                "(name LIKE 'labels_%' OR name = 'label_chunks')", {"d": svc.store.db})]:
            svc.store.command(f"TRUNCATE TABLE {svc.store.db}.{name}")

    def check(ids: list[str]) -> int:
        total = 0
        for j in ids:
            s = svc.job(j).model_dump()
            if s["status"] != "completed":
                raise RuntimeError(f"job {j} ended {s['status']}: {s['last_errors']}")
            n, uniq = svc.store.label_counts(SeriesKey(s["instrument"], s["granularity"]), s["label_set"])
            if not n == uniq == s["candles_total"]:
                raise RuntimeError(f"job {j}: {n} rows, {uniq} distinct, {s['candles_total']} candles")
            total += n
        return total

    t0 = time.perf_counter()
    warm = [job(inst, WARMUP_CANDLES) for inst in SERIES]
    for j in warm:
        svc.execute(j)
    check(warm)
    warmup_s = time.perf_counter() - t0
    kind = svc.job(warm[0]).model_dump()["cluster"]

    runs = []
    for scenario in ("1 job", "2 jobs"):
        for rep in range(args.repeats):
            empty()
            pids = {"job process": [os.getpid()], "workers": workers(), **extra_pids}
            before = {k: _cpu(v) for k, v in pids.items()}
            statements = _lines(query_log)
            t0 = time.perf_counter()
            if scenario == "1 job":
                ids = [job(SERIES[0], per)]
                svc.execute(ids[0])
            else:
                ids = [job(inst, per) for inst in SERIES]
                # Both start on the scheduler's first pass; its later
                # passes (each reads every job's record) only reap.
                sched = Scheduler(svc, max_jobs=2, interval=0.5)
                sched.start()
                while len(sched.started_order) < 2 or sched.running():
                    time.sleep(0.02)
                sched.shutdown()
            wall = time.perf_counter() - t0
            cpu = {k: _cpu(v) - before[k] for k, v in pids.items()}
            candles = check(ids)
            chunks = sum(svc.job(j).model_dump()["chunks_total"] for j in ids)
            runs.append({"scenario": scenario, "repeat": rep, "wall_s": wall, "candles": candles,
                         "chunks": chunks, "cpu": cpu,
                         "statements": _lines(query_log) - statements if query_log else None})
    # What the label rows and candles take on disk, merged (ClickHouse's
    # default codec): the capacity model's disk and network terms.
    db = svc.store.db
    for t in [r[0] for r in svc.store.rows("SELECT name FROM system.tables WHERE database = {d:String} "
                                           "AND (name LIKE 'labels_%' OR name = 'candles')", {"d": db})]:
        svc.store.command(f"OPTIMIZE TABLE {db}.{t} FINAL")
    disk = {("labels" if t.startswith("labels_") else t): (int(n), int(c), int(u)) for t, n, c, u in svc.store.rows(
        "SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes) "
        "FROM system.parts WHERE database = {d:String} AND active AND "
        "(table LIKE 'labels_%' OR table = 'candles') GROUP BY table", {"d": db})}
    if client is not None:
        client.close()
        cluster.close()
    if server is not None:
        server.stop()
    return {"mode": args.mode, "cluster": kind, "disk": disk, "setup_s": setup_s, "warmup_s": warmup_s,
            "chunk_size": int(svc.state.job(ids[0])["chunk_size"]), "runs": runs}


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    home = tempfile.mkdtemp(prefix="gpubackfill-bench-cluster-")
    try:
        cmd = [sys.executable, __file__, "--child", mode, "--home", home, "--candles", str(args.candles),
               "--workers", str(args.workers), "--repeats", str(args.repeats),
               "--chunk-size", str(args.chunk_size)]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GPUBACKFILL_", "CLICKHOUSE_", "REDIS_", "DASK_"))}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{res.stderr[-4000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        from gpubackfill.storage.redis_server import stop_server

        stop_server(Path(home) / "redis")
        shutil.rmtree(home, ignore_errors=True)


def _per(n: int | None, chunks: int) -> str:
    return "-" if n is None else f"{n / chunks:.2f}"


def _fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v >= 0.05)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candles", type=float, default=2e6, help="candles in all (two series)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=0, help="0: the planner's default")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.candles = int(args.candles)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return

    print(f"machine   : {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load avg  : {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"data      : {len(SERIES)} M1 series x {args.candles // len(SERIES):,} candles, "
          f"{args.workers} workers, chunk size {args.chunk_size or 'default'}")
    results = [run_mode(m, args) for m in MODES]
    print(f"load avg  : {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end\n")
    for r in results:
        print(f"{r['mode']:<15}: cluster '{r['cluster']}', chunk size {r['chunk_size']:,}, "
              f"setup {r['setup_s']:.1f} s, warm-up {r['warmup_s']:.1f} s")
    print()
    head = (f"{'mode':<15} {'scenario':<7} {'run':>3} {'chunks':>6} {'candles':>10} {'wall s':>7} "
            f"{'M candles/min':>13} {'CPU s':>6} {'M candles/CPU-min':>17} {'stmts/chunk':>11}  CPU s by process")
    print(head)
    print("-" * len(head))
    best: dict[tuple[str, str], float] = {}
    for r in results:
        for run in r["runs"]:
            rate = run["candles"] / run["wall_s"] * 60 / 1e6
            cpu = sum(run["cpu"].values())
            key = (r["mode"], run["scenario"])
            best[key] = max(best.get(key, 0.0), rate)
            print(f"{r['mode']:<15} {run['scenario']:<7} {run['repeat']:>3} {run['chunks']:>6} "
                  f"{run['candles']:>10,} {run['wall_s']:>7.2f} {rate:>13.1f} {cpu:>6.1f} "
                  f"{run['candles'] / cpu * 60 / 1e6:>17.1f} "
                  f"{_per(run['statements'], run['chunks']):>11}  {_fmt_cpu(run['cpu'])}")
    print()
    for scenario in ("1 job", "2 jobs"):
        a = best[(MODES[0], scenario)]
        for mode in MODES[1:]:
            b = best[(mode, scenario)]
            print(f"{scenario}: {mode} at {b / a:.0%} of the in-process default "
                  f"(best runs: {b:.1f} against {a:.1f} M candles/min)")
    print("correctness: every run's label rows == candles == distinct keys (no FINAL): PASS")
    for name, (n, packed, raw) in sorted(results[0]["disk"].items()):
        print(f"on disk ({results[0]['mode']}, merged): {name} {packed / n:.1f} bytes a row "
              f"compressed, {raw / n:.1f} uncompressed ({n:,} rows)")


if __name__ == "__main__":
    main()
