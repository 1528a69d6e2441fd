"""`gpubackfill demo`: synthetic candles in, every label out, a summary.

The demo writes only series of its own, named ``DEMO.<instrument>``
(``DEMO.EURUSD`` gets EURUSD's synthetic model), so a store that already
holds real EURUSD candles, and labels computed from them, is left as it was.
It rewrites its own series on each run; the second run finds their labels
already computed from the same candles and skips them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.compute as pc

from ..candles.synthetic import generate
from ..common.granularity import parse_granularity, parse_instrument
from ..compute import compute_labels
from ..errors import InvalidInput
from ..jobs.eta import rate_text
from ..storage.clickhouse_store import SeriesKey

PREFIX = "DEMO."


def demo_series(name: str) -> tuple[str, str]:
    """(the demo's series name, the instrument whose synthetic model it uses)
    for ``EURUSD`` or ``DEMO.EURUSD`` alike."""
    base = parse_instrument(name).removeprefix(PREFIX)
    return parse_instrument(PREFIX + base), parse_instrument(base)


def store_location(settings) -> str:
    if settings.embedded_clickhouse:
        where = f"the embedded ClickHouse in {settings.chdb_path}"
    else:
        from ..config import redact_url

        where = f"ClickHouse at {redact_url(settings.clickhouse_url)}"
    return f"{where}, database {settings.clickhouse_database}"


def run_demo(svc, instruments: list[str], granularity: str, years: float,
             workers: int | None, console) -> None:
    series = [demo_series(i) for i in instruments]
    if not series:
        raise InvalidInput("--instruments names no instrument (e.g. --instruments EURUSD,GBPUSD)")
    if not 2 <= 365.25 * years <= 365.25 * 100:  # NaN too
        raise InvalidInput(f"--years must be from 0.006 (two days) to 100, got {years:g}")
    granularity = parse_granularity(granularity)
    names = [name for name, _ in series]
    end = datetime(2026, 1, 1, tzinfo=UTC)
    start = end - timedelta(days=round(365.25 * years))
    console.print(f"[bold]gpubackfill demo[/bold]: {', '.join(names)} {granularity}, "
                  f"{start.date()} .. {end.date()}")
    console.print(f"  synthetic series of the demo's own, in {store_location(svc.settings)}; "
                  f"other series are not touched")
    svc.init()
    for name, model in series:
        t0 = time.perf_counter()
        table = generate(model, granularity, start, end)
        report = svc.ingest_table(SeriesKey(name, granularity), table)
        console.print(f"  {name}: {table.num_rows:,} synthetic candles "
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
    for name in names:
        job_id = svc.create_job(name, granularity, start.date().isoformat(),
                                (end - timedelta(days=1)).date().isoformat(), workers=workers)
        from .run import _run_foreground

        _run_foreground(svc, job_id, None)
        summaries.append(svc.job(job_id).model_dump())
    wall = time.perf_counter() - t_all
    console.print()
    console.print(f"[bold]{_backfill_summary(summaries, wall)}[/bold]")
    first, label_set = names[0], summaries[0]["label_set"]
    # The demo's own set: the series may hold others (a `start` with other labels).
    labels = svc.export(first, granularity, set_id=label_set)
    tb = labels.column("tb_label")
    counts = pc.value_counts(tb.drop_null()).to_pylist()
    dist = {int(c["values"]): int(c["counts"]) for c in counts}
    n = sum(dist.values()) or 1
    console.print(f"{first} triple-barrier labels: "
                  + ", ".join(f"{k:+d}: {dist.get(k, 0) / n:.1%}" for k in (-1, 0, 1))
                  + f" ({tb.null_count:,} NULL)")
    mfe = labels.column("mfe").to_numpy(zero_copy_only=False)
    console.print(f"{first} median MFE over 24 bars: {np.nanmedian(mfe):.5f}")
    console.print()
    cmd = command_name()
    console.print("next:")
    console.print(f"  {cmd} status                       # every job")
    console.print(f"  {cmd} status {summaries[0]['job_id']}           # one job")
    console.print(f"  {cmd} export --instrument {first} --granularity {granularity} "
                  f"--set {label_set} -o labels.parquet")
    console.print(f"  {cmd} metrics")
    s = svc.settings
    console.print(f"  {cmd} serve                        # then open http://{s.api_host}:{s.api_port}/ui/ "
                  f"(the console: jobs, series, labels on a chart)")


def _backfill_summary(summaries: list[dict], wall: float) -> str:
    """The jobs' work in one line; candles skipped as already labelled are
    counted apart, not as throughput."""
    done = sum(s["candles_done"] for s in summaries)
    skipped = sum(s["candles_skipped"] for s in summaries)
    hits = sum(s["cache_hits"] for s in summaries)
    chunks = sum(s["chunks"]["done"] for s in summaries) - hits
    computed = done - skipped
    skip_text = (f"{skipped:,} candles skipped in {hits} chunks: their labels were already "
                 f"computed from the same candles")
    if not computed and skipped:
        return f"nothing to backfill in {wall:.1f}s: {skip_text}"
    text = (f"backfilled {computed:,} candles in {chunks} chunks in {wall:.1f}s "
            f"({rate_text(computed / wall * 60)} candles/min end to end)")
    return text + (f"; {skip_text}" if skipped else "")


def command_name() -> str:
    """How to call gpubackfill here: by name when it is on PATH, else through
    this interpreter (a virtualenv that is not activated)."""
    import shutil
    import sys

    return "gpubackfill" if shutil.which("gpubackfill") else f"{sys.executable} -m gpubackfill"
