"""The commands a backfill is made of, each as its own process: peak RSS,
wall time and rate of ``gpubackfill ingest`` (a Parquet file), ``gpubackfill
start`` (the default labels and settings) and ``gpubackfill export`` (to
Parquet), for series of 1M, 10M and (``--with-100m``) 100M candles.

Per size, in a fresh ``GPUBACKFILL_HOME`` under ``--workdir`` (deleted at
the end unless ``--keep``):

1. A Parquet file of BTCUSD M1 candles (crypto trades 24/7, so N minutes
   hold N bars) from 2005-01-01, written by a child process in pieces of
   ``PIECE`` candles (``gpubackfill.candles.synthetic.generate`` of each
   piece, seeded by its number, one row group of 1M rows at a time), so the
   100M file is never in memory.  Each piece starts its own random path: a
   price gap every 10M bars, which candles allow.
2. ``python -m gpubackfill ingest FILE``, ``... start`` over the whole range
   and ``... export -o FILE.parquet``, one after the other, each a child
   process: wall time from start to exit; CPU time (user + system) and peak
   RSS from the child's rusage (``os.wait4``: the figure ``/usr/bin/time -v``
   prints as "Maximum resident set size").  Rates are candles (ingest,
   start) or rows (export) per minute of wall time.

The machine is shared: the load average is printed before and after, and
CPU seconds are steadier than wall time when other work runs.

Run from the repository root::

    python bench/commands_rss.py                   # 1M and 10M
    python bench/commands_rss.py --sizes 1e6       # one size
    python bench/commands_rss.py --with-100m       # also 100M: ~30 GB of disk, ~20 min
    python bench/commands_rss.py --floor           # and chDB alone over the same label rows

``--floor`` adds, after each export, the statement ``export`` reads
(``SELECT ts, <label columns> ... ORDER BY ts``) run by chDB alone: to
``FORMAT Null`` (the read with no output) and ``INTO OUTFILE`` Parquet, with
ClickHouse's default compression (zstd) and without; the time of the
statement alone, in a child process of its own.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import cpu_model, human, load_average, mib, print_table, size_name  # noqa: E402

INSTRUMENT, GRANULARITY = "BTCUSD", "M1"
START_MS = 1_104_537_600_000  # 2005-01-01
STEP_MS = 60_000
PIECE = 10_000_000
DAY_MS = 86_400_000
DISK_PER_CANDLE = 300  # bytes: input file, store, spill, export (about 230 measured), with room


def _generate(n: int, path: str) -> None:
    """Child: ``n`` candles to ``path``, ``PIECE`` at a time."""
    import pyarrow.parquet as pq

    from gpubackfill.candles.synthetic import generate

    writer = None
    for k, first in enumerate(range(0, n, PIECE)):
        count = min(PIECE, n - first)
        a = START_MS + first * STEP_MS
        t = generate(INSTRUMENT, GRANULARITY, a, a + count * STEP_MS, seed=k)
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema)
        writer.write_table(t, row_group_size=1 << 20)
        del t
    if writer is not None:
        writer.close()


FLOORS = {
    "chDB read, FORMAT Null": ("FORMAT Null", ""),
    "chDB INTO OUTFILE Parquet": ("INTO OUTFILE {out} TRUNCATE FORMAT Parquet", ""),
    "chDB INTO OUTFILE Parquet, uncompressed": ("INTO OUTFILE {out} TRUNCATE FORMAT Parquet",
                                                 " SETTINGS output_format_parquet_compression_method = 'none'"),
}


def _floor(kind: str, out: str) -> None:
    """Child: one statement over the series' label rows in ts order, what
    ``export`` reads, done by chDB alone; prints its wall and CPU seconds."""
    from gpubackfill.service import BackfillService
    from gpubackfill.storage import export
    from gpubackfill.storage.clickhouse_store import SeriesKey

    svc = BackfillService()
    svc.init()
    key = SeriesKey(INSTRUMENT, GRANULARITY)
    (chosen,) = export.sets_of(svc.store, key)
    tail, settings = FLOORS[kind]
    sql = (f"SELECT ts, {', '.join(chosen.columns)} FROM {svc.store.db}.labels_{chosen.set_id} "
           f"WHERE instrument = '{INSTRUMENT}' AND granularity = '{GRANULARITY}' "
           f"AND label_set = '{chosen.set_id}' ORDER BY ts {tail.format(out=repr(out))}{settings}")
    t0, c0 = time.perf_counter(), time.process_time()
    svc.store.command(sql)
    print(f"statement {time.perf_counter() - t0:.2f} s, CPU {time.process_time() - c0:.2f} s")


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


def _spawn(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """One child process: wall time, and CPU time and peak RSS from its
    rusage (reaped with wait4 while its pipes drain in threads)."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chunks: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        chunks[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout),
                                                                         ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = chunks.get("out", ""), chunks.get("err", "")
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss * 1024,
            "out": lines[-1] if lines else ""}


def measure(n: int, workdir: Path, keep: bool, source: Path, floor: bool) -> list[list[str]]:
    home = Path(tempfile.mkdtemp(prefix=f"cmds-{size_name(n)}-", dir=workdir))
    env = {**os.environ, "GPUBACKFILL_HOME": str(home / "home")}
    for name in ("REDIS_URL", "CLICKHOUSE_URL"):
        env.pop(name, None)  # the embedded defaults, in the fresh home
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    data = home / "candles.parquet"
    out = home / "labels.parquet"
    py = sys.executable
    rows: list[list[str]] = []
    try:
        _log(f"{size_name(n)}: generating {data}")
        g = _spawn([py, __file__, "--_generate", str(n), str(data)], env, source)
        _log(f"  generated in {g['wall']:.1f} s ({data.stat().st_size / 2**20:,.0f} MiB)")
        end_day = _day(START_MS + n * STEP_MS + DAY_MS)
        steps = [
            ("ingest", [py, "-m", "gpubackfill", "ingest", str(data), "--instrument", INSTRUMENT,
                        "--granularity", GRANULARITY]),
            ("start", [py, "-m", "gpubackfill", "start", "--instrument", INSTRUMENT,
                       "--granularity", GRANULARITY, "--start-date", _day(START_MS), "--end-date", end_day]),
            ("export", [py, "-m", "gpubackfill", "export", "--instrument", INSTRUMENT,
                        "--granularity", GRANULARITY, "-o", str(out)]),
        ]
        for name, cmd in steps:
            _log(f"  {name} ({load_average()})")
            r = _spawn(cmd, env, source)  # -m imports from the working directory first
            _log(f"    {r['wall']:.1f} s, {mib(r['rss'])} MiB: {r['out']}")
            rows.append([name, size_name(n), f"{r['wall']:.1f}", f"{r['cpu']:.1f}",
                         human(n / r["wall"] * 60), mib(r["rss"]), r["out"][:90]])
        if out.exists():
            _log(f"  export file {out.stat().st_size / 2**20:,.0f} MiB")
            out.unlink()
        for kind in FLOORS if floor else ():
            _log(f"  floor: {kind} ({load_average()})")
            r = _spawn([py, __file__, "--_floor", kind, str(home / "floor.parquet")], env, source)
            _log(f"    {r['out']}")
            statement = float(r["out"].split()[1])
            rows.append([f"  floor: {kind}", size_name(n), f"{statement:.1f}", r["out"].split()[-2],
                         human(n / statement * 60), mib(r["rss"]), "the statement alone (no process start)"])
            (home / "floor.parquet").unlink(missing_ok=True)
    finally:
        from gpubackfill.storage.redis_server import stop_server

        stop_server(home / "home" / "redis")  # the bundled redis-server the commands started
        if keep:
            _log(f"  kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return rows


def _revision(source: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%h %s"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{source} ({rev[:80]})" if rev else str(source)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e6,1e7", help="candles per series, comma-separated")
    p.add_argument("--with-100m", action="store_true", help="add a 100M-candle series")
    p.add_argument("--workdir", default=tempfile.gettempdir(), help="where the homes and files go")
    p.add_argument("--keep", action="store_true", help="keep each size's home (store, files)")
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[1]),
                   help="the gpubackfill checkout the commands run (default: this one), "
                        "to compare two revisions")
    p.add_argument("--floor", action="store_true",
                   help="after export, the same rows read (FORMAT Null) and written to Parquet by "
                        "chDB alone (INTO OUTFILE), each in its own process")
    p.add_argument("--_generate", nargs=2, metavar=("N", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--_floor", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._generate:
        _generate(int(args._generate[0]), args._generate[1])
        return
    if args._floor:
        _floor(*args._floor)
        return
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    if args.with_100m and 100_000_000 not in sizes:
        sizes.append(100_000_000)
    workdir = Path(args.workdir)
    import chdb
    import pyarrow as pa

    print("gpubackfill commands: peak RSS and speed, each command its own process")
    print(f"command   : {shlex.join([sys.executable, *sys.argv])}")
    print(f"date      : {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine   : {cpu_model()}; {os.cpu_count()} logical cores; "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM; "
          f"{platform.system()} {platform.release()}")
    print(f"python    : {platform.python_version()}; chdb {chdb.__version__}; pyarrow {pa.__version__}")
    print(f"source    : {_revision(Path(args.source).resolve())}")
    print(f"series    : {INSTRUMENT} {GRANULARITY}, synthetic, from {_day(START_MS)}; "
          f"store embedded (chDB + bundled redis-server) in a fresh home per size")
    print(f"load avg  : {load_average()} (1/5/15 min, at start)")
    rows: list[list[str]] = []
    for n in sizes:
        free = shutil.disk_usage(workdir).free
        if n * DISK_PER_CANDLE > free:
            print(f"skipped   : {size_name(n)} candles: needs about {n * DISK_PER_CANDLE / 2**30:.0f} GiB "
                  f"in {workdir}, {free / 2**30:.0f} GiB free")
            continue
        rows += measure(n, workdir, args.keep, Path(args.source).resolve(), args.floor)
    print(f"load avg  : {load_average()} (at the end)")
    print_table(["command", "candles", "wall s", "CPU s", "rows/min", "peak RSS MiB", "output (last line)"],
                rows)


if __name__ == "__main__":
    main()
