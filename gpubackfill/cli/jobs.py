"""Job commands: start, update, execute, status, monitor, series, pause,
resume, cancel, cleanup."""

from __future__ import annotations

import contextlib
import json
import time

import click

from ..errors import InvalidInput
from ._common import (
    _console,
    _eta_text,
    _Greedy,
    _iso,
    _labels,
    _last_day,
    _listed,
    _params,
    _plural,
    _say_skipped,
    _service,
    _sharing,
    _store_service,
    rate_text,
)
from .run import _run_foreground

SERIES_SHOWN = 100  # series `status` lists by default; a job of more says how many it left out


@click.command()
@click.option("--instrument", required=True, multiple=True,
              help="Instrument(s): repeat the option or separate with commas; '*' = every "
                   "instrument in the store at the given granularities.")
@click.option("--granularity", required=True, multiple=True,
              help="Granularity(ies), e.g. M5 or M5,H1 (repeatable).")
@click.option("--start-date", default=None, help="Default: each series' first candle.")
@click.option("--end-date", default=None, help="Inclusive; default: each series' last candle.")
@click.option("--labels", cls=_Greedy,
              help="Label names, space or comma separated (default: enhanced_triple_barrier "
                   "vol_scaled_return mfe_mae; also fixed_horizon, trend_scanning).")
@click.option("--param", "params", multiple=True, metavar="LABEL.KEY=VALUE",
              help="A label parameter, e.g. enhanced_triple_barrier.horizon=48 (repeatable).")
@click.option("--chunk-size", type=int, default=None, help="Candles per chunk (BATCH_CHUNK_SIZE).")
@click.option("--workers", type=int, default=None, help="Parallel chunks (BATCH_MAX_WORKERS).")
@click.option("--min-workers", type=int, default=None, help="Lower bound for adaptive scaling.")
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), default="normal")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default=None)
@click.option("--force", is_flag=True, help="Recompute chunks even if already computed.")
@click.option("--source", default=None, help="Read candles from this source (`gpubackfill source list`).")
@click.option("--detach", is_flag=True, help="Only queue the job; run it with `execute`.")
@click.option("--scheduler", default=None, help="Dask scheduler address (DASK_SCHEDULER_ADDRESS).")
@click.pass_context
def start(ctx, instrument, granularity, start_date, end_date, labels, params, chunk_size,
          workers, min_workers, priority, backend, force, source, detach, scheduler) -> None:
    """Plan a backfill job over one or many series and run it (or queue it with --detach)."""
    args = (list(instrument), list(granularity), start_date, end_date, _labels(labels), _params(params),
            chunk_size, workers, priority, force, backend, min_workers, source)
    if detach:
        svc = _store_service(ctx)
        job_id = svc.create_job(*args)
        click.echo(job_id)
        _say_skipped(_service(ctx).job(job_id).model_dump())
        holder = getattr(svc, "holder", None)
        if holder is not None and holder.command == "serve":
            click.echo(f"queued; the scheduler of {svc.describe()} runs it", err=True)
        elif holder is not None:
            click.echo(f"queued; run it with: gpubackfill execute {job_id} (once {svc.describe()}, "
                       f"which holds the embedded store, has finished)", err=True)
        else:
            click.echo(f"queued; run it with: gpubackfill execute {job_id}", err=True)
        return
    svc = _service(ctx)
    with _sharing(ctx, "start"):
        job_id = svc.create_job(*args)
        s = svc.job(job_id, series_limit=0).model_dump()
        many = f" over {s['series_count']:,} series" if s["series_count"] > 1 else ""
        click.echo(f"job {job_id}{many}", err=True)
        _say_skipped(s)
        _run_foreground(svc, job_id, scheduler)


@click.command()
@click.option("--instrument", multiple=True, help="Only these instruments (default: all).")
@click.option("--granularity", multiple=True, help="Only these granularities (default: all).")
@click.option("--chunk-size", type=int, default=None, help="Candles per new chunk (BATCH_CHUNK_SIZE).")
@click.option("--workers", type=int, default=None, help="Parallel chunks (BATCH_MAX_WORKERS).")
@click.option("--detach", is_flag=True, help="Only queue the job(s); run them with `execute`.")
@click.option("--scheduler", default=None, help="Dask scheduler address (DASK_SCHEDULER_ADDRESS).")
@click.option("--source", default=None, help="The labels computed from this source (default: the built-in table).")
@click.pass_context
def update(ctx, instrument, granularity, chunk_size, workers, detach, scheduler, source) -> None:
    """Bring computed labels up to date: new candles, the incomplete tail,
    chunks whose candles changed.  One job per label set; nothing to do is exit 0."""
    args = dict(instrument=list(instrument) or None, granularity=list(granularity) or None,
                chunk_size=chunk_size, workers=workers, source=source)
    svc = _store_service(ctx) if detach else _service(ctx)
    with contextlib.nullcontext() if detach else _sharing(ctx, "update"):
        plans = svc.plan_update(**args)
        if not plans:
            click.echo("labels are up to date: nothing to compute")
            return
        for p in plans:
            click.echo(f"job {p['job_id']}: label set {p['label_set']}, {p['series']:,} series, "
                       f"{_plural(p['stale_chunks'], 'stale chunk')} to recheck, {p['new_chunks']:,} new "
                       f"({_plural(p['chunks'], 'chunk')} after packing)", err=True)
            if detach:
                click.echo(p["job_id"])
        if detach:
            return
        failed: int | str | None = 0
        for p in plans:
            try:
                _run_foreground(svc, p["job_id"], scheduler)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    failed = exc.code
                    if exc.code in (130, 1) and svc.job(p["job_id"]).model_dump()["status"] == "interrupted":
                        raise
        if failed:
            raise SystemExit(failed)


@click.command(name="series")
@click.option("--instrument", multiple=True, help="Only these instruments.")
@click.option("--granularity", multiple=True, help="Only these granularities.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--source", default=None, help="A source's series (default: the built-in table's).")
@click.pass_context
def series_cmd(ctx, instrument, granularity, fmt, source) -> None:
    """The series in the store: candles, first/last, and each label set's coverage."""
    import dataclasses

    svc = _store_service(ctx)
    rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) and not isinstance(r, type) else r
            for r in svc.series_overview(list(instrument) or None, list(granularity) or None,
                                         source=source)]
    if _listed(rows, fmt, "no series in the store (see `gpubackfill ingest`)"):
        return
    from rich.table import Table

    table = Table("series", "candles", "first", "last", "label set", "labelled", "NULL (data ends)",
                  "chunks", "stale", "behind")
    for r in rows:
        head = [f"{r['instrument']} {r['granularity']}", f"{r['candles']:,}", _iso(r["first_ms"]),
                _iso(r["last_ms"])]
        if not r["sets"]:
            table.add_row(*head, "-", "", "", "", "", "")
        for n, c in enumerate(r["sets"]):
            table.add_row(*(head if n == 0 else [""] * 4),
                          f"{c['set_id']} ({', '.join(c['labels'])})", f"{c['rows']:,}",
                          f"{c['incomplete']:,}", f"{c['chunks']:,}", f"{c['stale_chunks']:,}",
                          "yes" if c["behind"] else "no")
    _console().print(table)


@click.command()
@click.argument("job_id")
@click.option("--scheduler", default=None, help="Dask scheduler address.")
@click.pass_context
def execute(ctx, job_id: str, scheduler: str | None) -> None:
    """Run or resume a queued, paused, interrupted or failed job."""
    with _sharing(ctx, "execute"):
        _run_foreground(_service(ctx), job_id, scheduler)


def _job_row(s: dict) -> list[str]:
    eta = _eta_text(s)
    state = s["status"] + (" (driver gone)" if s.get("driver", {}).get("gone") else "")
    many = s["series_count"]
    what = (f"{many:,} series ({s['granularity']})" if many > 3
            else f"{s['instrument']} {s['granularity']}")
    return [s["job_id"], state, what,
            f"{s['start'][:10]}..{_last_day(s['end'])}", f"{s['progress'] * 100:.1f}%",
            f"{s['chunks']['done']:,}/{s['chunks_total']:,}", f"{s['candles_done']:,}",
            f"{rate_text(s['throughput_per_min'])}/min", eta, f"{s['errors']:,}"]


_SERIES_COLOURS = {"pending": "dim", "running": "yellow", "completed": "green",
                   "completed_with_errors": "magenta", "failed": "red", "paused": "cyan",
                   "interrupted": "red", "cancelled": "dim", "queued": "dim"}
# The order a long grid shows series in: those that need a look first.
_SERIES_ORDER = ("running", "failed", "interrupted", "completed_with_errors", "paused", "queued",
                 "cancelled", "pending", "completed")


def _series_grid(s: dict, limit: int | None = None):
    """One line per series of the job view's page: its state, a bar of its
    candles, chunks, errors.  ``limit``: the first that need a look, at most
    that many."""
    from rich.table import Table

    grid = Table("series", "status", "progress", "chunks", "candles", "errors", box=None,
                 title=f"{s['series_count']:,} series", title_justify="left")
    shown = s["series"] if limit is None else sorted(
        s["series"], key=lambda x: _SERIES_ORDER.index(x["status"]))[:limit]
    for x in shown:
        frac = x["candles_done"] / x["candles_total"] if x["candles_total"] else 0.0
        width = 20
        bar = "█" * int(frac * width) + "░" * (width - int(frac * width))
        colour = _SERIES_COLOURS.get(x["status"], "")
        grid.add_row(f"{x['instrument']} {x['granularity']}", f"[{colour}]{x['status']}[/]",
                     f"[{colour}]{bar}[/] {frac * 100:5.1f}%",
                     f"{x['chunks_done']:,}/{x['chunks_total']:,}",
                     f"{x['candles_done']:,}/{x['candles_total']:,}", f"{x['errors']:,}")
    read = len(s["series"])
    if limit is not None and read > limit:
        counts: dict[str, int] = {}
        for x in s["series"]:
            counts[x["status"]] = counts.get(x["status"], 0) + 1
        among = f"{read}" if read == s["series_count"] else f"the {read:,} read of {s['series_count']:,}"
        grid.caption = (f"{limit} of {among} shown; "
                        + ", ".join(f"{n} {k}" for k, n in counts.items()))
    elif limit is None and s["series_offset"] + read < s["series_count"]:
        left = s["series_count"] - s["series_offset"] - read
        grid.caption = (f"… and {left:,} more (gpubackfill status {s['job_id']} "
                        f"--series-offset {s['series_offset'] + read})")
    return grid


_HEADERS = ["job", "status", "series", "range", "progress", "chunks", "candles", "throughput",
            "eta", "errors"]


@click.command()
@click.argument("job_id", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--series-offset", type=click.IntRange(min=0), default=0,
              help="A job's series listed from this one on (its first: 0).")
@click.option("--series-limit", type=click.IntRange(min=0), default=SERIES_SHOWN, show_default=True,
              help="A job's series listed at most (the rest: '… and N more').")
@click.pass_context
def status(ctx, job_id: str | None, fmt: str, series_offset: int, series_limit: int) -> None:
    """Show one job, or all jobs."""
    svc = _service(ctx)
    rows = ([svc.job(job_id, series_offset, series_limit).model_dump()] if job_id
            else [j.model_dump() for j in svc.jobs(series_limit=series_limit)])
    if fmt == "json":
        click.echo(json.dumps(rows[0] if job_id else rows, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(*_HEADERS)
    # Every other command takes the id: never cut it to "2e46…"; in a
    # narrow terminal the other columns wrap instead of losing their ends.
    for column in table.columns:
        column.overflow = "fold"
    table.columns[0].no_wrap = True
    table.columns[0].min_width = 12
    for s in rows:
        table.add_row(*_job_row(s))
    _console().print(table)
    for s in rows:
        if s.get("driver", {}).get("gone"):
            click.echo(f"job {s['job_id']} is {s['status']} but {s['driver']['why']}: nothing runs it; "
                       f"resume with: gpubackfill execute {s['job_id']}")
    if job_id:
        s = rows[0]
        if s["series_count"] > 1:
            _console().print(_series_grid(s))
        _say_skipped(s)
        ran = f"{s['backend_used']} ({s['backend_reason']})" if s["backend_used"] else "not run yet"
        click.echo(f"labels: {', '.join(s['labels'])} (label set {s['label_set']}); backend {s['backend']}, "
                   f"ran on {ran}; cluster {s['cluster'] or '-'}")
        if s["dashboard"]:
            click.echo(f"dask dashboard: {s['dashboard']}")
        total = s["stages"].get("total", 0.0)
        if total > 0:
            steps = [(k, v) for k, v in s["stages"].items() if k != "total"]
            click.echo("chunk time by step: " + ", ".join(
                f"{k} {v:.1f}s ({v / total:.0%})" for k, v in steps)
                + f"; {total:.1f}s over {_plural(s['chunks']['done'], 'chunk')}")
        if s["bars_resolved"] or s["bars_ambiguous"]:
            click.echo(f"ambiguous bars: {s['bars_resolved']:,} resolved from finer candles, "
                       f"{s['bars_ambiguous']:,} left to the tie rule")
        for idx, err in s["last_errors"].items():
            click.echo(f"chunk {idx}: {err}")


@click.command()
@click.argument("job_id")
@click.option("--refresh", type=float, default=5.0, help="Seconds between updates.")
@click.option("--once", is_flag=True, help="Print one update and exit.")
@click.pass_context
def monitor(ctx, job_id: str, refresh: float, once: bool) -> None:
    """Live view of a job: progress, throughput, ETA, chunk states, errors."""
    from rich.live import Live
    from rich.table import Table

    svc = _service(ctx)
    if refresh <= 0:
        raise InvalidInput(f"--refresh must be > 0, got {refresh}")

    def render():
        s = svc.job(job_id).model_dump()
        t = Table(title=f"job {job_id}", show_header=False)
        t.add_row("status", s["status"])
        t.add_row("series", f"{s['instrument']} {s['granularity']} {s['start']} .. {s['end']}")
        t.add_row("progress", f"{s['progress'] * 100:.1f}% ({s['candles_done']:,}/{s['candles_total']:,} candles)")
        t.add_row("chunks", ", ".join(f"{k} {v:,}" for k, v in s["chunks"].items()))
        t.add_row("throughput", f"{rate_text(s['throughput_per_min'])} candles/min "
                                f"(recent {rate_text(s['recent_rate_per_min'])})")
        t.add_row("eta", _eta_text(s) + (" (90% interval; confidence 0..1)" if "conf" in _eta_text(s) else ""))
        t.add_row("errors", f"{s['errors']:,}")
        for idx, err in s["last_errors"].items():
            t.add_row(f"chunk {idx}", err)
        if s["dashboard"]:
            t.add_row("dashboard", s["dashboard"])
        if s["series_count"] > 1:
            from rich.console import Group

            return Group(t, _series_grid(s, limit=20))
        return t

    console = _console()
    if once:
        console.print(render())
        return
    from ..jobs.machine import FINAL_JOB_STATES

    with Live(render(), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(refresh)
            live.update(render())
            if svc.job(job_id).model_dump()["status"] in FINAL_JOB_STATES:
                break


def _transition_command(name: str, help_: str):
    @click.command(name=name, help=help_)
    @click.argument("job_id")
    @click.pass_context
    def command(ctx, job_id: str) -> None:
        new = getattr(_service(ctx), name)(job_id)
        click.echo(f"{job_id} {new}")

    return command


pause = _transition_command("pause", "Pause a job (between chunks).")


resume = _transition_command("resume", "Resume a paused job.")


cancel = _transition_command("cancel", "Cancel a job.")


@click.command()
@click.option("--older-than", type=float, required=True, help="Days since the job finished.")
@click.option("--status", "status_", type=click.Choice(["completed", "completed_with_errors",
                                                         "failed", "cancelled"]), default=None)
@click.pass_context
def cleanup(ctx, older_than: float, status_: str | None) -> None:
    """Forget finished jobs (their labels stay in ClickHouse), and drop the
    copies of derived bars that settled or forgotten jobs left behind."""
    svc = _service(ctx)
    removed = svc.cleanup(older_than, status_)
    click.echo(f"removed {_plural(len(removed), 'job')}" + (f": {' '.join(removed)}" if removed else ""))
    swept = svc.sweep_copies()
    if swept:
        click.echo(f"dropped {_plural(len(swept), 'leftover copy', 'leftover copies')} of derived bars: "
                   + " ".join(swept))

