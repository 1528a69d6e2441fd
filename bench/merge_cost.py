"""What merging label rows costs chDB, against inserting them.

A job writes one part a chunk into its label table, and chDB merges those
parts in the background while the job runs.  This writes ``--chunks`` chunks
of ``--rows`` label rows each (all three default labels over synthetic
BTCUSD M1 candles, computed before any clock starts) through the engine's
own ``Store.write_labels`` into a fresh label table, in two ways side by
side:

- the engine's label table settings (``LABEL_TABLE_SETTINGS``: a merge
  waits for ten parts);
- the same table with ClickHouse's default merge selector
  (``min_parts_to_merge_at_once = 0``).

For each it prints the inserts' wall and CPU seconds (merges running
meanwhile are in them), the CPU until chDB's background merges have
settled, the parts left, and then one ``OPTIMIZE ... FINAL`` of every row:
what merging each row once costs, per row, against inserting it.  CPU is
the process's (user + system), so run it on a quiet machine.

    python bench/merge_cost.py --chunks 10 --rows 1e6 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import report as _report  # bench/report.py

import gpubackfill

START_MS = 1_104_537_600_000
STEP_MS = 60_000


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _parts(store, table: str) -> int:
    return store.rows(f"SELECT count() FROM system.parts WHERE database = '{store.db}' "
                      f"AND table = '{table}' AND active")[0][0]


def _settle(store, quiet_s: float = 1.0, limit_s: float = 300.0) -> None:
    """Until no merge has run for ``quiet_s`` (a merge is assigned a moment
    after the insert that calls for it, so an empty ``system.merges`` alone
    does not say that none is coming)."""
    deadline = time.monotonic() + limit_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if store.rows("SELECT count() FROM system.merges")[0][0]:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def one(store, table: str, chunks: list, variant: str, rows: int) -> dict[str, float]:
    """The chunks written into the emptied label table under ``variant``'s
    merge setting, merges settled, then one final merge of every row."""
    from gpubackfill.storage.clickhouse_store import SeriesKey

    store.command(f"TRUNCATE TABLE {store.db}.{table}")
    store.command(f"ALTER TABLE {store.db}.{table} MODIFY SETTING {variant}")
    set_id = table.removeprefix("labels_")
    key = SeriesKey("BTCUSD", "M1")
    _settle(store)
    cpu0, t0 = _cpu(), time.perf_counter()
    for i, labels in enumerate(chunks):
        start = START_MS + i * rows * STEP_MS
        store.write_labels(key, set_id, start, start + rows * STEP_MS, labels, f"bench{i}", 0, "bench",
                           fresh=True, record=False)
    ins_s, ins_cpu = time.perf_counter() - t0, _cpu() - cpu0
    _settle(store)
    settled_s, settled_cpu = time.perf_counter() - t0, _cpu() - cpu0
    left = _parts(store, table)
    cpu1, t1 = _cpu(), time.perf_counter()
    store.command(f"OPTIMIZE TABLE {store.db}.{table} FINAL")
    final_s, final_cpu = time.perf_counter() - t1, _cpu() - cpu1
    n = store.rows(f"SELECT count() FROM {store.db}.{table}")[0][0]
    if n != rows * len(chunks):
        raise RuntimeError(f"{n} label rows, not {rows * len(chunks)}")
    return {"insert_s": ins_s, "insert_cpu": ins_cpu, "settled_s": settled_s, "settled_cpu": settled_cpu,
            "parts": left, "final_s": final_s, "final_cpu": final_cpu, "rows": n}


def row(name: str, r: int, m: dict[str, float]) -> list[str]:
    per_row = 1e6 / m["rows"]
    return [name, str(r + 1), f"{m['insert_s']:.2f}", f"{m['insert_cpu']:.2f}",
            f"{m['settled_s']:.2f}", f"{m['settled_cpu']:.2f}", str(m["parts"]),
            f"{m['final_s']:.2f}", f"{m['final_cpu']:.2f}",
            f"{m['insert_cpu'] * per_row:.2f}", f"{m['final_cpu'] * per_row:.2f}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--rows", default="1e6")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    rows = int(float(args.rows))
    gpubackfill.keep_freed_memory()
    from gpubackfill.candles.synthetic import generate
    from gpubackfill.compute import compute_labels

    candles = generate("BTCUSD", "M1", START_MS, START_MS + args.chunks * rows * STEP_MS)
    chunks = [compute_labels(candles.slice(i * rows, rows)) for i in range(args.chunks)]
    del candles
    print(f"command : {' '.join(sys.argv)}")
    print(f"machine : {_report.cpu_model()}; {os.cpu_count()} cores; load {_report.load_average()}")
    print(f"writes  : {args.chunks} chunks of {rows:,} label rows (all three default labels), "
          f"one Store.write_labels each, into a fresh label table\n")
    from gpubackfill.config import Settings
    from gpubackfill.labels import DEFAULT_LABELS, resolve
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import LABEL_TABLE_SETTINGS
    from gpubackfill.storage.redis_server import stop_server

    # One home for both (chDB opens one data folder a process), the table
    # emptied before each run.
    home = tempfile.mkdtemp(prefix="gpubackfill-merge-")
    settings = Settings.from_env({"GPUBACKFILL_HOME": home}, dotenv=False)
    out: list[list[str]] = []
    try:
        store = BackfillService(settings).store
        store.init_schema()
        table = f"labels_{store.ensure_label_table(resolve(list(DEFAULT_LABELS)))}"
        runs = {  # the label table's own setting, then ClickHouse's default
            "engine (merge at ten parts)":
                f"min_parts_to_merge_at_once = {LABEL_TABLE_SETTINGS['min_parts_to_merge_at_once']}",
            "ClickHouse default selector": "min_parts_to_merge_at_once = 0",
        }
        for r in range(args.repeats):
            for name, variant in runs.items():  # alternated, so drift shows in both
                out.append(row(name, r, one(store, table, chunks, variant, rows)))
                print(f"  {name}, run {r + 1}: done", file=sys.stderr)
    finally:
        stop_server(settings.redis_dir)
        shutil.rmtree(home, ignore_errors=True)

    _report.print_table(
        ["merge policy", "run", "inserts s", "CPU s", "until merges settle s", "CPU s", "parts left",
         "OPTIMIZE FINAL s", "CPU s", "insert CPU us/row", "merge CPU us/row"],
        out, title="Label rows written a chunk a part, then merged (CPU: the process's; the inserts' "
                   "includes merges running meanwhile)")
    print(f"\nload at end {_report.load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
