"""`gpubackfill demo`: synthetic candles in, every label out, a summary."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.compute as pc

from ..candles.synthetic import generate
from ..compute import compute_labels
from ..eta import rate_text
from ..storage.clickhouse_store import SeriesKey


def run_demo(svc, instruments: list[str], granularity: str, years: float,
             workers: int | None, console) -> None:
    end = datetime(2026, 1, 1, tzinfo=UTC)
    start = end - timedelta(days=round(365.25 * years))
    console.print(f"[bold]gpubackfill demo[/bold]: {', '.join(instruments)} {granularity}, "
                  f"{start.date()} .. {end.date()}")
    svc.init()
    total_candles = 0
    for inst in instruments:
        t0 = time.perf_counter()
        table = generate(inst, granularity, start, end)
        report = svc.ingest_table(SeriesKey(inst, granularity), table)
        total_candles += table.num_rows
        console.print(f"  {inst}: {table.num_rows:,} synthetic candles "
                      f"({report.inserted:,} new, {report.unchanged:,} already stored) "
                      f"in {time.perf_counter() - t0:.1f}s")
    # numba compiles the kernels on first use (then caches them on disk);
    # do it here so the backfill's throughput is the engine's own.
    t0 = time.perf_counter()
    compute_labels(table.slice(0, 5_000), ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"])
    console.print(f"  label kernels ready in {time.perf_counter() - t0:.1f}s "
                  f"(compiled on the first run, cached after)")
    summaries = []
    t_all = time.perf_counter()
    for inst in instruments:
        job_id = svc.create_job(inst, granularity, start.date().isoformat(),
                                (end - timedelta(days=1)).date().isoformat(), workers=workers)
        from .run import _run_foreground

        _run_foreground(svc, job_id, None)
        summaries.append(svc.status(job_id))
    wall = time.perf_counter() - t_all
    done = sum(s["candles_done"] for s in summaries)
    console.print()
    console.print(f"[bold]backfilled {done:,} candles in {sum(s['chunks_total'] for s in summaries)} "
                  f"chunks in {wall:.1f}s ({rate_text(done / wall * 60)} candles/min end to end)[/bold]")
    labels = svc.export(instruments[0], granularity, None, None)
    tb = labels.column("tb_label")
    counts = pc.value_counts(tb.drop_null()).to_pylist()
    dist = {int(c["values"]): int(c["counts"]) for c in counts}
    n = sum(dist.values()) or 1
    console.print(f"{instruments[0]} triple-barrier labels: "
                  + ", ".join(f"{k:+d}: {dist.get(k, 0) / n:.1%}" for k in (-1, 0, 1))
                  + f" ({tb.null_count:,} NULL)")
    mfe = labels.column("mfe").to_numpy(zero_copy_only=False)
    console.print(f"{instruments[0]} median MFE over 24 bars: {np.nanmedian(mfe):.5f}")
    console.print()
    cmd = command_name()
    console.print("next:")
    console.print(f"  {cmd} status                       # every job")
    console.print(f"  {cmd} status {summaries[0]['job_id']}           # one job")
    console.print(f"  {cmd} export --instrument {instruments[0]} --granularity {granularity} -o labels.parquet")
    console.print(f"  {cmd} metrics")


def command_name() -> str:
    """How to call gpubackfill here: by name when it is on PATH, else through
    this interpreter (a virtualenv that is not activated)."""
    import shutil
    import sys

    return "gpubackfill" if shutil.which("gpubackfill") else f"{sys.executable} -m gpubackfill"
