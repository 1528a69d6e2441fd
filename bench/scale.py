"""The control plane at scale: planning, Redis state, the driver and the
read models for jobs of 10k, 100k and 1M chunks over 1k, 10k and 100k series.

Everything is real but the label: the embedded store (chDB) and the bundled
redis-server in a fresh temporary ``GPUBACKFILL_HOME``, ``create_job`` and
``execute`` as a user calls them.  The label is a no-op registered by this
script (``scale_noop``: no columns, reads only ts).  The engine still reads
each chunk's candles and inserts its (key-only) rows, so the series are
tiny: ``--chunk-candles`` candles per chunk (default 2), made by one
``INSERT ... SELECT FROM numbers()``.

Per size it measures:

* planning: ``create_job`` wall time, split into the store's part (counts,
  marks) and the queueing in Redis;
* Redis memory: ``used_memory`` of ``INFO memory`` before and after
  queueing, per chunk and per series, and the entries of each of the job's
  keys (``MEMORY USAGE`` of a key of a million entries is itself a call of
  hundreds of ms: not used);
* the driver: ``execute`` in a thread for ``--run-seconds`` (chunks settled
  per second through Dask and chDB), and the bare control plane (``claim``
  then ``complete`` in a loop: what one process gets through Redis);
* ``status`` (``service.job``), ``GET /jobs/{id}`` (the REST API through
  its ASGI app), ``series`` (``service.series_overview``), medians of
  ``--repeats`` calls while the job runs;
* pause (the call, then until no chunk is leased), resume, cancel (the call,
  then until ``execute`` returns);
* the slowest Redis calls (``SLOWLOG`` with a 1 ms threshold and ``LATENCY
  LATEST``), by command, and the server's forks meanwhile (RDB snapshots and
  AOF rewrites, counted in its log; the longest fork).

    python bench/scale.py                       # 10k/1k, 100k/10k, 1M/100k
    python bench/scale.py --sizes 10000:1000    # one size
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NOOP = "scale_noop"
BASE_MS = 1_700_000_000_000  # series' first candle
STEP_MS = 60_000


def _noop_compute(kernels: Any, series: Any, sigma: Any, params: Any) -> dict:
    return {}


def register_noop() -> None:
    from gpubackfill import labels as registry
    from gpubackfill.labels import LabelSpec

    registry.REGISTRY[NOOP] = LabelSpec(
        name=NOOP, doc="nothing (the scale benchmark's label)", params=(),
        outputs=lambda p: [], halo=lambda p: (0, 0), compute=_noop_compute, inputs=())


def fill_candles(service, series: int, per_series: int) -> float:
    """``series`` M1 series (S000000...) of ``per_series`` candles each, in one statement."""
    store = service.store
    t0 = time.perf_counter()
    store.command(f"""
        INSERT INTO {store.db}.candles (instrument, granularity, ts, open, high, low, close, volume)
        SELECT concat('S', leftPad(toString(intDiv(number, {per_series})), 6, '0')), 'M1',
               fromUnixTimestamp64Milli(toInt64({BASE_MS} + (number % {per_series}) * {STEP_MS}), 'UTC'),
               1.0, 1.0, 1.0, 1.0, 1.0
        FROM numbers({series * per_series})""")
    store.command(f"OPTIMIZE TABLE {store.db}.candles FINAL")
    return time.perf_counter() - t0


def median_s(fn, n: int) -> tuple[float, float]:
    """(median, max) seconds of ``n`` calls."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def key_sizes(client, prefix: str, job: str) -> dict[str, int]:
    """Entries of each key of the job (each an O(1) call)."""
    length = {"hash": client.hlen, "list": client.llen, "set": client.scard, "zset": client.zcard,
              "string": client.strlen}
    out = {}
    for key in client.scan_iter(f"{prefix}:job:{job}*", count=1000):
        out[key.split(f"{job}", 1)[1].lstrip(":") or "hash"] = int(length[client.type(key)](key))
    return out


def rewrite_times(log: Path) -> list[float]:
    """When the server's AOF rewrites started (epoch s), from its log's
    "pid:M 07 Dec 2026 07:14:41.123 * Background append only file rewriting started"."""
    import datetime as dt

    out = []
    for line in (log.read_text(errors="replace") if log.exists() else "").splitlines():
        if "Background append only file rewriting started" in line:
            stamp = " ".join(line.split()[1:5])
            out.append(dt.datetime.strptime(stamp, "%d %b %Y %H:%M:%S.%f").astimezone().timestamp())
    return out


def persistence_events(log: Path) -> dict[str, int]:
    """Background saves the server's log has recorded so far, by kind."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {"rdb": text.count("Background saving started"),
            "aof_rewrite": text.count("Background append only file rewriting started"),
            "aof_fsync_slow": text.count("Asynchronous AOF fsync is taking too long")}


def wait_until(pred, timeout: float = 600.0, step: float = 0.01) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(step)
    return time.perf_counter() - t0


def control_plane_rate(service, job: str, n: int) -> float:
    """Claims + completions per second of one process, no Dask and no chDB."""
    from gpubackfill.jobs.result import ChunkResult, SegmentOutcome

    state = service.state
    done = 0
    t0 = time.perf_counter()
    while done < n:
        got = state.claim(job, "bench-owner", 60_000)
        if isinstance(got, str):
            break
        idx, token, segs = got
        result = ChunkResult(idx, "done", segments=tuple(SegmentOutcome(s.series, s.rows, 0, s.rows)
                                                         for s in segs), duration=0.001)
        state.complete(job, idx, token, result, {s.series: f"S{s.series:06d}" for s in segs})
        done += 1
    return done / (time.perf_counter() - t0)


def one_size(service, settings, chunks: int, series: int, args) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from gpubackfill.engine import submit
    from gpubackfill.serve.api import create_app

    client = service.state.client

    def field(name: str) -> int:  # one field: the job's hash grows with its series
        return int(client.hget(f"{settings.redis_prefix}:job:{job}", name) or 0)

    per_series = chunks // series * args.chunk_candles
    row: dict[str, Any] = {"chunks": chunks, "series": series, "load_before": os.getloadavg()[0],
                           "t0": time.time()}
    row["fill_s"] = fill_candles(service, series, per_series)
    client.config_set("slowlog-log-slower-than", 1000)  # microseconds
    client.config_set("slowlog-max-len", 100_000)
    client.config_set("latency-monitor-threshold", 1)
    client.slowlog_reset()
    client.config_resetstat()
    client.execute_command("LATENCY", "RESET")
    mem0 = int(client.info("memory")["used_memory"])
    forks0, saves0 = int(client.info("stats")["total_forks"]), persistence_events(settings.redis_dir / "redis.log")

    # Planning, the store's part and Redis's apart (submit.backfill = both).
    spec = service._spec("*", "M1", None, None, [NOOP], None, args.chunk_candles, args.workers)
    t0 = time.perf_counter()
    planned = submit.plan_backfill(service.store, settings, spec, True, True)
    row["plan_store_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    job = submit.queue(service.store, service.state, planned)
    row["plan_redis_s"] = time.perf_counter() - t1
    row["plan_s"] = row["plan_store_s"] + row["plan_redis_s"]
    got = service.job(job)
    assert got.chunks_total == chunks and got.series_count == series, (got.chunks_total, got.series_count)
    mem1 = int(client.info("memory")["used_memory"])
    keys = key_sizes(client, settings.redis_prefix, job)
    row["mem_bytes"] = mem1 - mem0
    row["mem_per_chunk"] = (mem1 - mem0) / chunks
    row["mem_per_series"] = (mem1 - mem0) / series
    row["keys"] = keys

    api = TestClient(create_app(service))
    # The job runs in this process (as `gpubackfill start` does) while the
    # read models are timed from the main thread.
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(r=service.execute(job)), daemon=True)
    t_run = time.perf_counter()
    runner.start()
    wait_until(lambda: field("chunks_done") > 0, timeout=300)
    t_first = time.perf_counter() - t_run
    done0, t0 = field("chunks_done"), time.perf_counter()
    row["status_s"], row["status_max_s"] = median_s(lambda: service.job(job), args.repeats)
    row["api_s"], row["api_max_s"] = median_s(lambda: api.get(f"/jobs/{job}").raise_for_status(),
                                              args.repeats)
    row["series_s"], _ = median_s(lambda: service.series_overview(), max(1, args.repeats // 5))
    left = args.run_seconds - (time.perf_counter() - t0)
    if left > 0:
        time.sleep(left)
    done1, t1 = field("chunks_done"), time.perf_counter()
    row["first_chunk_s"] = t_first
    row["driver_chunks_per_s"] = (done1 - done0) / (t1 - t0)

    t0 = time.perf_counter()
    service.pause(job)
    row["pause_call_s"] = time.perf_counter() - t0
    row["pause_drain_s"] = wait_until(lambda: field("chunks_leased") == 0, 120)
    t0 = time.perf_counter()
    service.resume(job)
    row["resume_call_s"] = time.perf_counter() - t0
    wait_until(lambda: field("chunks_leased") > 0, 120)
    t0 = time.perf_counter()
    service.cancel(job)
    row["cancel_call_s"] = time.perf_counter() - t0
    runner.join(300)
    row["cancel_return_s"] = time.perf_counter() - t0
    assert not runner.is_alive() and result["r"].status == "cancelled", result

    # The bare control plane over a second job of the same plan (a new one:
    # the first is cancelled; the identical-job guard is per active job).
    job2 = submit.queue(service.store, service.state, planned)
    service.state.begin_run(job2, "bench-owner", 600_000)
    n = min(chunks, args.claims)
    row["claims_per_s"] = control_plane_rate(service, job2, n)
    service.cancel(job2)

    slow = client.slowlog_get(100_000)
    row["slowest"] = [(round(e["duration"] / 1000, 1), int(e["start_time"] - row["t0"]),
                       " ".join((e["command"].decode() if isinstance(e["command"], bytes) else e["command"])
                                .split()[:3]))
                      for e in sorted(slow, key=lambda e: -e["duration"])[:12]]
    row["rewrites_at"] = [int(t - row["t0"]) for t in rewrite_times(settings.redis_dir / "redis.log")
                          if t >= row["t0"]]
    worst: dict[str, float] = {}
    over: dict[str, int] = {}
    for entry in slow:
        cmd = entry["command"]
        cmd = cmd.decode() if isinstance(cmd, bytes) else cmd
        words = cmd.split()
        name = " ".join(words[:2]) if words and words[0].upper() in ("EVALSHA", "EVAL") else words[0]
        if words and words[0].upper() == "EVALSHA":
            name = "EVALSHA " + _script_name(service, words[1])
        worst[name] = max(worst.get(name, 0.0), entry["duration"] / 1000)
        if entry["duration"] > 10_000:
            over[name] = over.get(name, 0) + 1
    row["slowlog_ms"] = dict(sorted(worst.items(), key=lambda kv: -kv[1]))
    row["slowlog_max_ms"] = max(worst.values(), default=0.0)
    row["over_10ms"] = dict(sorted(over.items(), key=lambda kv: -kv[1]))
    row["calls_over_10ms"] = sum(over.values())
    # Every call's count and mean time (scripts' inner calls counted too).
    stats = client.info("commandstats")
    row["calls"] = sum(int(v["calls"]) for v in stats.values())
    row["mean_us"] = {k.removeprefix("cmdstat_"): (int(v["calls"]), round(float(v["usec_per_call"]), 1))
                      for k, v in sorted(stats.items(), key=lambda kv: -int(kv[1]["calls"]))[:10]}
    row["latency"] = client.execute_command("LATENCY", "LATEST")
    saves1 = persistence_events(settings.redis_dir / "redis.log")
    row["forks"] = int(client.info("stats")["total_forks"]) - forks0
    row["fork_ms"] = int(client.info("stats")["latest_fork_usec"]) / 1000 if row["forks"] else 0.0
    row["saves"] = {k: saves1[k] - saves0[k] for k in saves1}
    for j in (job, job2):
        service.state.delete_job(j)
    # The next size starts as a first backfill does: no candles, no labels.
    for (name,) in service.store.rows(f"SELECT name FROM system.tables WHERE database = '{service.store.db}' "
                                      f"AND (name LIKE 'labels_%' OR name IN ('candles', 'label_chunks'))"):
        service.store.command(f"TRUNCATE TABLE {service.store.db}.{name}")
    return row


def _script_name(service, sha: str) -> str:
    from gpubackfill.storage.redis.scripts import source

    for path in (Path(__file__).parents[1] / "gpubackfill/storage/redis/lua").glob("*.lua"):
        import hashlib

        if hashlib.sha1(source(path.stem).encode()).hexdigest() == sha:
            return path.stem
    return sha[:8]


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("chunks", "chunks", "{:,}"), ("series", "series", "{:,}"),
            ("plan s", "plan_s", "{:.2f}"), ("store s", "plan_store_s", "{:.2f}"),
            ("redis s", "plan_redis_s", "{:.2f}"), ("MiB", "mem_bytes", None),
            ("B/chunk", "mem_per_chunk", "{:.0f}"), ("B/series", "mem_per_series", "{:.0f}"),
            ("claims/s", "claims_per_s", "{:,.0f}"), ("driver ch/s", "driver_chunks_per_s", "{:,.0f}"),
            ("status ms", "status_s", "ms"), ("API ms", "api_s", "ms"), ("series ms", "series_s", "ms"),
            ("pause ms", "pause_call_s", "ms"), ("drain s", "pause_drain_s", "{:.2f}"),
            ("resume ms", "resume_call_s", "ms"), ("cancel ms", "cancel_call_s", "ms"),
            ("cancel→ret s", "cancel_return_s", "{:.2f}"), ("max Redis call ms", "slowlog_max_ms", "{:.1f}"),
            ("calls > 10 ms", "calls_over_10ms", "{:d}"), ("forks", "forks", "{:d}"),
            ("last fork ms", "fork_ms", "{:.1f}")]
    head = "| " + " | ".join(c[0] for c in cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, k, f in cols:
            v = r[k]
            cells.append(f"{v / 2**20:.1f}" if f is None else f"{v * 1000:.1f}" if f == "ms" else f.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000:1000,100000:10000,1000000:100000",
                    help="chunks:series pairs, comma-separated")
    ap.add_argument("--chunk-candles", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--run-seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--claims", type=int, default=5000, help="claim+complete loop length")
    ap.add_argument("--redis-nice", type=int, default=None,
                    help="renice the redis-server to this (e.g. -10, as root): on a machine shared "
                         "with other work, a command is otherwise timed with the waits for a core "
                         "(a deployment gives Redis a core of its own)")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="gpubackfill-scale-"))
    os.environ.setdefault("GPUBACKFILL_LOG_LEVEL", "WARNING")
    from gpubackfill.config import Settings
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.redis_server import stop_server

    register_noop()
    settings = Settings.from_env({"GPUBACKFILL_HOME": str(home), "BATCH_MAX_WORKERS": str(args.workers)},
                                 dotenv=False)
    service = BackfillService(settings)
    service.init()
    if args.redis_nice is not None:
        from gpubackfill.storage.redis_server import server_pid

        pid = server_pid(settings.redis_dir)
        assert pid is not None, "the bundled redis-server has no pid file"
        os.setpriority(os.PRIO_PROCESS, pid, args.redis_nice)
    rows = []
    try:
        for pair in args.sizes.split(","):
            chunks, series = (int(x) for x in pair.split(":"))
            t0 = time.perf_counter()
            row = one_size(service, settings, chunks, series, args)
            rows.append(row)
            print(f"\n{chunks:,} chunks / {series:,} series ({time.perf_counter() - t0:.0f}s): "
                  f"fill {row['fill_s']:.1f}s, first chunk after {row['first_chunk_s']:.1f}s, "
                  f"load average {row['load_before']:.1f} before, {os.getloadavg()[0]:.1f} after", flush=True)
            print("  keys (entries):", row["keys"], flush=True)
            print("  background saves:", row["saves"], f"forks {row['forks']}, the last {row['fork_ms']:.1f} ms",
                  flush=True)
            print("  slowest Redis calls (ms):", {k: round(v, 1) for k, v in
                                                  list(row["slowlog_ms"].items())[:8]}, flush=True)
            print(f"  calls over 10 ms, by command (of {row['calls']:,} calls):", row["over_10ms"], flush=True)
            print("  the most frequent commands (calls, mean µs):", row["mean_us"], flush=True)
            print("  slowest (ms, s into the size, command):", row["slowest"], flush=True)
            print("  AOF rewrites started at (s into the size):", row["rewrites_at"], flush=True)
            print("  LATENCY LATEST:", row["latency"], flush=True)
    finally:
        stop_server(settings.redis_dir)
        shutil.rmtree(home, ignore_errors=True)
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, chunk = {args.chunk_candles} candles, "
          f"{args.workers} workers, redis-server nice {args.redis_nice if args.redis_nice is not None else 0}, "
          f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
