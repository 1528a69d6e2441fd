"""The ``gpubackfill`` command line: parse, call the service, render.

Every user mistake ends in one line on stderr and a non-zero exit (2 for a
bad request, 1 for an unreachable or failing dependency); never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


import click

from .errors import DependencyError, GpubackfillError, InvalidInput
from .eta import rate_text

LABEL_NAMES = ("enhanced_triple_barrier", "vol_scaled_return", "mfe_mae")


def _console():
    from rich.console import Console

    # Piped output (a log, grep) has no terminal to fit: rich would fold
    # every table into 80 columns.  COLUMNS still wins when set.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(width=wide)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InvalidInput as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except DependencyError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except GpubackfillError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def _service(ctx: click.Context):
    if "service" not in ctx.obj:
        from .config import Settings
        from .service import BackfillService

        ctx.obj["service"] = BackfillService(Settings.from_env())
    return ctx.obj["service"]


def _store_service(ctx: click.Context):
    """The service for a command that needs ClickHouse: this process's own,
    or, while another live process holds the embedded store (a ``serve``, a
    running ``start``/``execute``), a stand-in that runs the same operations
    there (``holder.py``)."""
    if "store_service" not in ctx.obj:
        from . import holder
        from .config import Settings

        remote = holder.remote(Settings.from_env())
        if remote is not None:
            click.echo(f"the embedded store is held by {remote.describe()}: running this there",
                       err=True)
        ctx.obj["store_service"] = remote or _service(ctx)
    return ctx.obj["store_service"]


def _sharing(ctx: click.Context, command: str, required: bool = True):
    """While this command holds the embedded store, other processes reach it through us."""
    from .holder import sharing

    return sharing(_service(ctx), command, required)


class _Greedy(click.Option):
    """A repeatable option that also takes the words after it, as in
    ``--labels enhanced_triple_barrier vol_scaled_return mfe_mae``."""

    def __init__(self, *args, **kwargs):
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            original = opt.process

            def process(value, state, original=original):
                original(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    original(state.rargs.pop(0), state)

            opt.process = process


def _params(values: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in values:
        key, eq, value = item.partition("=")
        label, dot, name = key.partition(".")
        if not eq or not dot or not label or not name:
            raise InvalidInput(f"--param must look like LABEL.KEY=VALUE, got {item!r}")
        out.setdefault(label.strip(), {})[name.strip()] = value.strip()
    return out


def _labels(values: tuple[str, ...]) -> list[str] | None:
    names = [n.strip() for v in values for n in v.replace(",", " ").split() if n.strip()]
    return names or None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True,
              help="Log what happens (LOG_LEVEL=DEBUG); LOG_FORMAT=json for JSON lines.")
@click.version_option(package_name="gpubackfill")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Backfill machine-learning labels over OHLC candles.

    Candles and labels live in ClickHouse (embedded chDB by default, or
    CLICKHOUSE_URL), job state in Redis (a bundled server by default, or
    REDIS_URL), and chunks run on Dask.
    """
    import logging
    import os

    from . import logs

    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    # Job and chunk events go to stderr at LOG_LEVEL (WARNING unless set, so
    # that normal output stays clean); --verbose shows everything.
    level = "DEBUG" if verbose else (os.environ.get("LOG_LEVEL") or "WARNING").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        level = "WARNING"  # Settings reports the bad value with its name
    fmt = "json" if (os.environ.get("LOG_FORMAT") or "").lower() == "json" else "text"
    logs.configure(level, fmt)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # Their warnings about a refused connection come before our own one
        # error line, which already says it (with the URL, password hidden).
        # (urllib3.connectionpool: clickhouse_connect resets "urllib3" on import.)
        for name in ("urllib3.connectionpool", "clickhouse_connect"):
            logging.getLogger(name).setLevel(logging.ERROR)


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the ClickHouse schema (also done on first use)."""
    svc = _store_service(ctx)
    svc.init()
    click.echo(f"schema ready in database {svc.settings.clickhouse_database}")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--instrument", required=True)
@click.option("--granularity", required=True)
@click.option("--tz", default=None, help="Time zone of naive times in the file (default UTC).")
@click.pass_context
def ingest(ctx: click.Context, path: str, instrument: str, granularity: str, tz: str | None) -> None:
    """Load candles from a CSV or Parquet file (idempotent)."""
    if not Path(path).exists():
        raise InvalidInput(f"no such file: {path}")
    report = _store_service(ctx).ingest(path, instrument, granularity, tz)
    if report.sorted:
        click.echo("the rows were not in time order (newest first?): sorted them by time")
    click.echo(f"read {report.rows_read} rows: {report.inserted} inserted, {report.updated} updated, "
               f"{report.unchanged} already present, {len(report.rejected)} rejected")
    for row, ts, reason in report.rejected[:20]:
        click.echo(f"  rejected row {row} (ts {_iso(ts)}): {reason}")
    if len(report.rejected) > 20:
        click.echo(f"  ... and {len(report.rejected) - 20} more")


@main.command()
@click.option("--instrument", required=True)
@click.option("--granularity", required=True)
@click.option("--labels", cls=_Greedy,
              help="Label names of the set to export (default: the series' only set).")
@click.option("--param", "params", multiple=True, metavar="LABEL.KEY=VALUE",
              help="A parameter the job used, e.g. enhanced_triple_barrier.horizon=48.")
@click.option("--set", "set_id", default=None, help="A label set id (see `gpubackfill sets`).")
@click.option("--with-candles", is_flag=True, help="Add open, high, low, close, volume after ts.")
@click.option("--start-date", default=None)
@click.option("--end-date", default=None)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .parquet or .csv")
@click.pass_context
def export(ctx, instrument, granularity, labels, params, set_id, with_candles, start_date,
           end_date, output) -> None:
    """Write a computed label set (ts first) to Parquet or CSV for training.

    Parquet keeps ts as a UTC timestamp and records the instrument, the
    granularity and every label's parameters in its metadata; CSV writes
    ts as ISO 8601 text."""
    suffix = Path(output).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InvalidInput(f"output must end in .parquet or .csv, got {output!r}")
    folder = Path(output).absolute().parent
    if not folder.is_dir():
        raise InvalidInput(f"no folder {folder} for {output}")
    if Path(output).is_dir():
        raise InvalidInput(f"{output} is a folder")
    rows, cols, chosen = _store_service(ctx).export_file(
        output, instrument, granularity, _labels(labels), _params(params), start_date, end_date,
        set_id, with_candles)
    click.echo(f"wrote {rows:,} rows x {cols} columns of label set {chosen} to {output}")


@main.command()
@click.option("--instrument", required=True, multiple=True,
              help="Instrument(s): repeat the option or separate with commas; '*' = every "
                   "instrument in the store at the given granularities.")
@click.option("--granularity", required=True, multiple=True,
              help="Granularity(ies), e.g. M5 or M5,H1 (repeatable).")
@click.option("--start-date", required=True)
@click.option("--end-date", required=True)
@click.option("--labels", cls=_Greedy, help="Label names, space or comma separated (default: enhanced_triple_barrier vol_scaled_return mfe_mae; also fixed_horizon, trend_scanning).")
@click.option("--param", "params", multiple=True, metavar="LABEL.KEY=VALUE",
              help="A label parameter, e.g. enhanced_triple_barrier.horizon=48 (repeatable).")
@click.option("--chunk-size", type=int, default=None, help="Candles per chunk (BATCH_CHUNK_SIZE).")
@click.option("--workers", type=int, default=None, help="Parallel chunks (BATCH_MAX_WORKERS).")
@click.option("--min-workers", type=int, default=None, help="Lower bound for adaptive scaling.")
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), default="normal")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default=None)
@click.option("--force", is_flag=True, help="Recompute chunks even if already computed.")
@click.option("--detach", is_flag=True, help="Only queue the job; run it with `execute`.")
@click.option("--scheduler", default=None, help="Dask scheduler address (DASK_SCHEDULER_ADDRESS).")
@click.pass_context
def start(ctx, instrument, granularity, start_date, end_date, labels, params, chunk_size,
          workers, min_workers, priority, backend, force, detach, scheduler) -> None:
    """Plan a backfill job over one or many series and run it (or queue it with --detach)."""
    args = (list(instrument), list(granularity), start_date, end_date, _labels(labels), _params(params),
            chunk_size, workers, priority, force, backend, min_workers)
    if detach:
        svc = _store_service(ctx)
        job_id = svc.create_job(*args)
        click.echo(job_id)
        _say_skipped(_service(ctx).status(job_id))
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
        s = svc.status(job_id)
        many = f" over {len(s['series'])} series" if len(s["series"]) > 1 else ""
        click.echo(f"job {job_id}{many}", err=True)
        _say_skipped(s)
        _run_foreground(svc, job_id, scheduler)


def _say_skipped(s: dict) -> None:
    if s.get("skipped"):
        click.echo(f"skipped (no candles in the range): {', '.join(s['skipped'])}", err=True)


@main.command()
@click.option("--instrument", multiple=True, help="Only these instruments (default: all).")
@click.option("--granularity", multiple=True, help="Only these granularities (default: all).")
@click.option("--chunk-size", type=int, default=None, help="Candles per new chunk (BATCH_CHUNK_SIZE).")
@click.option("--workers", type=int, default=None, help="Parallel chunks (BATCH_MAX_WORKERS).")
@click.option("--detach", is_flag=True, help="Only queue the job(s); run them with `execute`.")
@click.option("--scheduler", default=None, help="Dask scheduler address (DASK_SCHEDULER_ADDRESS).")
@click.pass_context
def update(ctx, instrument, granularity, chunk_size, workers, detach, scheduler) -> None:
    """Bring computed labels up to date: new candles, the incomplete tail,
    chunks whose candles changed.  One job per label set; nothing to do is exit 0."""
    args = dict(instrument=list(instrument) or None, granularity=list(granularity) or None,
                chunk_size=chunk_size, workers=workers)
    svc = _store_service(ctx) if detach else _service(ctx)
    with contextlib.nullcontext() if detach else _sharing(ctx, "update"):
        plans = svc.plan_update(**args)
        if not plans:
            click.echo("labels are up to date: nothing to compute")
            return
        for p in plans:
            click.echo(f"job {p['job_id']}: label set {p['label_set']}, {p['series']} series, "
                       f"{p['stale_chunks']} stale chunk(s) to recheck, {p['new_chunks']} new "
                       f"({p['chunks']} chunks after packing)", err=True)
            if detach:
                click.echo(p["job_id"])
        if detach:
            return
        failed = 0
        for p in plans:
            try:
                _run_foreground(svc, p["job_id"], scheduler)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    failed = exc.code
                    if exc.code in (130, 1) and svc.status(p["job_id"])["status"] == "interrupted":
                        raise
        if failed:
            raise SystemExit(failed)


@main.command(name="series")
@click.option("--instrument", multiple=True, help="Only these instruments.")
@click.option("--granularity", multiple=True, help="Only these granularities.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def series_cmd(ctx, instrument, granularity, fmt) -> None:
    """The series in the store: candles, first/last, and each label set's coverage."""
    import dataclasses

    svc = _store_service(ctx)
    rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r
            for r in svc.series_overview(list(instrument) or None, list(granularity) or None)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no series in the store (see `gpubackfill ingest`)")
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
                          f"{c['incomplete']:,}", str(c["chunks"]), str(c["stale_chunks"]),
                          "yes" if c["behind"] else "no")
    _console().print(table)


@main.command()
@click.argument("job_id")
@click.option("--scheduler", default=None, help="Dask scheduler address.")
@click.pass_context
def execute(ctx, job_id: str, scheduler: str | None) -> None:
    """Run or resume a queued, paused, interrupted or failed job."""
    with _sharing(ctx, "execute"):
        _run_foreground(_service(ctx), job_id, scheduler)


class _HardStop(BaseException):
    """A second SIGINT/SIGTERM: stop now (BaseException so nothing swallows it)."""


def _run_foreground(svc, job_id: str, scheduler: str | None) -> None:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    received: list[int] = []

    def on_signal(signum, frame):
        if stop.is_set():
            raise _HardStop()
        received.append(signum)
        stop.set()
        click.echo("\nstopping: no new chunks; running ones finish or go back to the queue "
                   "(signal again to exit now)", err=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console = _console()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=console,
                      transient=False, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task(job_id, total=None, rate="")

            def progress(s: dict) -> None:
                bar.update(task, total=s["candles_total"], completed=s["candles_done"],
                           description=f"{job_id} {s['status']}",
                           rate=f"{rate_text(s['throughput_per_min'])} candles/min")

            svc.execute(job_id, progress=progress, scheduler=scheduler, stop=stop)
    except _HardStop:
        # The driver has handed its chunks back (see _Driver.abandon).  Leave
        # without unwinding the interpreter: chDB threads may still be inside
        # a query, and tearing the process down under them can crash it.
        click.echo(f"\nsecond signal: exited now; running chunks went back to the queue. "
                   f"Resume with: gpubackfill execute {job_id}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    s = svc.status(job_id)
    click.echo(f"{job_id} {s['status']}: {s['candles_done']:,} candles in {s['chunks']['done']} chunks, "
               f"{s['rows_written']:,} label rows written, {s['cache_hits']} chunks unchanged (skipped), "
               f"{rate_text(s['throughput_per_min'])} candles/min")
    if s["status"] == "interrupted":
        if not received:
            # No signal of ours: the driver stopped itself because every
            # worker slot is held by a chunk past its deadline.
            click.echo(f"error: {s['interrupted_because'] or 'the job was interrupted'}", err=True)
            for idx, err in s["last_errors"].items():
                click.echo(f"  chunk {idx}: {err}", err=True)
            click.echo(f"resume with: gpubackfill execute {job_id}", err=True)
            raise SystemExit(1)
        click.echo(f"resume with: gpubackfill execute {job_id}", err=True)
        # SIGTERM is an orderly stop (a deploy, a pod eviction); Ctrl-C is the user's.
        raise SystemExit(0 if received and received[0] == signal.SIGTERM else 130)
    if s["status"] in ("failed", "completed_with_errors"):
        for idx, err in s["last_errors"].items():
            click.echo(f"  chunk {idx}: {err}", err=True)
        raise SystemExit(1)
    if s["status"] == "cancelled":
        raise SystemExit(1)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _last_day(end: str) -> str:
    """The last day a range includes: its end is exclusive, so an end at
    midnight (a date given as --end-date) shows the day before."""
    from datetime import date, timedelta

    if end.endswith("T00:00:00Z"):
        return (date.fromisoformat(end[:10]) - timedelta(days=1)).isoformat()
    return end[:10]


def _eta_text(s: dict) -> str:
    """``120s (90-150s, conf 0.82)``: the ETA, its 90% interval and confidence."""
    if s["eta_s"] is None:
        return "-"
    e = s.get("eta") or {}
    if s["status"] != "running" or e.get("low_s") is None:
        return f"{s['eta_s']:.0f}s"
    return f"{s['eta_s']:.0f}s ({e['low_s']:.0f}-{e['high_s']:.0f}s, conf {e['confidence']:.2f})"


def _job_row(s: dict) -> list[str]:
    eta = _eta_text(s)
    state = s["status"] + (" (driver gone)" if s.get("driver", {}).get("gone") else "")
    many = len(s.get("series") or [])
    what = (f"{many} series ({s['granularity']})" if many > 3
            else f"{s['instrument']} {s['granularity']}")
    return [s["job_id"], state, what,
            f"{s['start'][:10]}..{_last_day(s['end'])}", f"{s['progress'] * 100:.1f}%",
            f"{s['chunks']['done']}/{s['chunks_total']}", f"{s['candles_done']:,}",
            f"{rate_text(s['throughput_per_min'])}/min", eta, str(s["errors"])]


_SERIES_COLOURS = {"pending": "dim", "running": "yellow", "completed": "green",
                   "completed_with_errors": "magenta", "failed": "red"}


def _series_grid(s: dict, limit: int | None = None):
    """One line per series: its state, a bar of its candles, chunks, errors."""
    from rich.table import Table

    grid = Table("series", "status", "progress", "chunks", "candles", "errors", box=None,
                 title=f"{len(s['series'])} series", title_justify="left")
    shown = s["series"] if limit is None else sorted(
        s["series"], key=lambda x: ("running", "failed", "completed_with_errors", "pending",
                                    "completed").index(x["status"]))[:limit]
    for x in shown:
        frac = x["candles_done"] / x["candles_total"] if x["candles_total"] else 0.0
        width = 20
        bar = "█" * int(frac * width) + "░" * (width - int(frac * width))
        colour = _SERIES_COLOURS.get(x["status"], "")
        grid.add_row(f"{x['instrument']} {x['granularity']}", f"[{colour}]{x['status']}[/]",
                     f"[{colour}]{bar}[/] {frac * 100:5.1f}%",
                     f"{x['chunks_done']}/{x['chunks_total']}",
                     f"{x['candles_done']:,}/{x['candles_total']:,}", str(x["errors"]))
    if limit is not None and len(s["series"]) > limit:
        counts: dict[str, int] = {}
        for x in s["series"]:
            counts[x["status"]] = counts.get(x["status"], 0) + 1
        grid.caption = (f"{limit} of {len(s['series'])} shown; "
                        + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return grid


_HEADERS = ["job", "status", "series", "range", "progress", "chunks", "candles", "throughput",
            "eta", "errors"]


@main.command()
@click.argument("job_id", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def status(ctx, job_id: str | None, fmt: str) -> None:
    """Show one job, or all jobs."""
    svc = _service(ctx)
    rows = [svc.status(job_id)] if job_id else svc.list_jobs()
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
        if len(s["series"]) > 1:
            _console().print(_series_grid(s))
        _say_skipped(s)
        ran = f"{s['backend_used']} ({s['backend_reason']})" if s["backend_used"] else "not run yet"
        click.echo(f"labels: {', '.join(s['labels'])} (label set {s['label_set']}); backend {s['backend']}, "
                   f"ran on {ran}; cluster {s['cluster'] or '-'}")
        if s["dashboard"]:
            click.echo(f"dask dashboard: {s['dashboard']}")
        if s["bars_resolved"] or s["bars_ambiguous"]:
            click.echo(f"ambiguous bars: {s['bars_resolved']:,} resolved from finer candles, "
                       f"{s['bars_ambiguous']:,} left to the tie rule")
        for idx, err in s["last_errors"].items():
            click.echo(f"chunk {idx}: {err}")


@main.command()
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
        s = svc.status(job_id)
        t = Table(title=f"job {job_id}", show_header=False)
        t.add_row("status", s["status"])
        t.add_row("series", f"{s['instrument']} {s['granularity']} {s['start']} .. {s['end']}")
        t.add_row("progress", f"{s['progress'] * 100:.1f}% ({s['candles_done']:,}/{s['candles_total']:,} candles)")
        t.add_row("chunks", ", ".join(f"{k} {v}" for k, v in s["chunks"].items()))
        t.add_row("throughput", f"{rate_text(s['throughput_per_min'])} candles/min "
                                f"(recent {rate_text(s['recent_rate_per_min'])})")
        t.add_row("eta", _eta_text(s) + (" (90% interval; confidence 0..1)" if "conf" in _eta_text(s) else ""))
        t.add_row("errors", str(s["errors"]))
        for idx, err in s["last_errors"].items():
            t.add_row(f"chunk {idx}", err)
        if s["dashboard"]:
            t.add_row("dashboard", s["dashboard"])
        if len(s["series"]) > 1:
            from rich.console import Group

            return Group(t, _series_grid(s, limit=20))
        return t

    console = _console()
    if once:
        console.print(render())
        return
    from .jobs.machine import FINAL_JOB_STATES

    with Live(render(), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(refresh)
            live.update(render())
            if svc.status(job_id)["status"] in FINAL_JOB_STATES:
                break


def _transition_command(name: str, help_: str):
    @main.command(name=name, help=help_)
    @click.argument("job_id")
    @click.pass_context
    def command(ctx, job_id: str) -> None:
        new = getattr(_service(ctx), name)(job_id)
        click.echo(f"{job_id} {new}")

    return command


pause = _transition_command("pause", "Pause a job (between chunks).")
resume = _transition_command("resume", "Resume a paused job.")
cancel = _transition_command("cancel", "Cancel a job.")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def metrics(ctx, fmt: str) -> None:
    """Figures over all jobs (from Redis, whichever process ran them)."""
    m = _service(ctx).metrics()
    if fmt == "json":
        click.echo(json.dumps(m, indent=2))
        return
    from rich.table import Table

    t = Table("metric", "value")
    for k, v in m.items():
        if k in ("totals", "breakers", "reliability", "alerts"):
            continue
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    tot = m["totals"]
    for k in ("chunks", "candles", "rows", "cache_hits", "chunk_failures"):
        t.add_row(f"total {k}", f"{tot[k]:,}")
    for k, v in tot["labels"].items():
        t.add_row(f"total label rows {k}", f"{v:,}")
    for name, b in m["breakers"].items():
        t.add_row(f"breaker {name}", f"{b['state']} ({b['failures']} failures)")
    for kind in ("retries", "errors"):
        t.add_row(kind, ", ".join(f"{c} {n}" for c, n in m["reliability"][kind].items()))
    _console().print(t)
    if m["alerts"]:
        for name, a in m["alerts"].items():
            click.echo(f"ALERT {name}: {a['message']} (since {_iso(a['since_ms'])})")
    else:
        click.echo("no alerts firing")


@main.command()
@click.option("--host", default=None, help="Address to listen on (GPUBACKFILL_API_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (GPUBACKFILL_API_PORT, default 8000).")
@click.option("--max-jobs", type=int, default=None,
              help="Jobs run at once (GPUBACKFILL_MAX_CONCURRENT_JOBS, default 1).")
@click.pass_context
def serve(ctx, host: str | None, port: int | None, max_jobs: int | None) -> None:
    """Run the REST API (/jobs, /metrics, /health) and the job scheduler."""
    if max_jobs is not None and max_jobs < 1:
        raise InvalidInput(f"--max-jobs must be >= 1, got {max_jobs}")
    if port is not None and not 0 < port < 65536:
        raise InvalidInput(f"--port must be 1..65535, got {port}")
    from .api import listen, serve as run

    import os

    from . import logs

    if not ctx.obj.get("verbose") and not os.environ.get("LOG_LEVEL"):
        logs.log.setLevel("INFO")  # a service logs its job events unless told otherwise
    svc = _service(ctx)
    host = host or svc.settings.api_host
    port = port or svc.settings.api_port
    sock = listen(host, port)
    click.echo(f"serving on http://{host}:{port} (docs: /docs, metrics: /metrics, health: /health)",
               err=True)
    # Not required: a store held elsewhere shows in /health and in the jobs, as before.
    with _sharing(ctx, "serve", required=False):
        run(svc, host, port, max_jobs, sock=sock)


@main.command()
@click.option("--force", is_flag=True, help="Stop it even while a job runs (the job then fails over).")
def stop(force: bool) -> None:
    """Stop the bundled redis-server of this GPUBACKFILL_HOME (started on first use).

    Its data stays on disk; the next command starts it again."""
    from .config import Settings
    from .redis_server import server_running, stop_server

    settings = Settings.from_env()
    if not settings.embedded_redis:
        click.echo("nothing to stop: REDIS_URL is set, and that Redis is not ours to stop")
        return
    if not server_running(settings.redis_dir):
        click.echo(f"no bundled redis-server is running for {settings.home}")
        return
    if not force:
        from .service import BackfillService

        busy = [s["job_id"] for s in BackfillService(settings).list_jobs("running")
                if not s["driver"]["gone"]]
        if busy:
            raise InvalidInput(f"job(s) {', '.join(busy)} are running on it; pause or cancel them "
                               f"first, or use --force")
    stop_server(settings.redis_dir)
    click.echo(f"stopped the bundled redis-server of {settings.home}")


@main.command()
@click.option("--older-than", type=float, required=True, help="Days since the job finished.")
@click.option("--status", "status_", type=click.Choice(["completed", "completed_with_errors",
                                                         "failed", "cancelled"]), default=None)
@click.pass_context
def cleanup(ctx, older_than: float, status_: str | None) -> None:
    """Forget finished jobs (their labels stay in ClickHouse)."""
    removed = _service(ctx).cleanup(older_than, status_)
    click.echo(f"removed {len(removed)} job(s)" + (f": {' '.join(removed)}" if removed else ""))


@main.command()
@click.option("--instruments", default="EURUSD,GBPUSD,USDJPY", show_default=True)
@click.option("--granularity", default="M1", show_default=True)
@click.option("--years", type=float, default=2.0, show_default=True)
@click.option("--workers", type=int, default=None)
@click.pass_context
def demo(ctx, instruments: str, granularity: str, years: float, workers: int | None) -> None:
    """Generate synthetic candles, ingest them, and backfill every label."""
    from .demo import run_demo

    with _sharing(ctx, "demo"):
        run_demo(_service(ctx), [i.strip() for i in instruments.split(",") if i.strip()],
                 granularity, years, workers, _console())


if __name__ == "__main__":  # pragma: no cover
    main()


from .cli_catalog import labels as labels_command, sets  # noqa: E402
from .cli_dlq import dlq  # noqa: E402 - registered after the helpers it imports

main.add_command(dlq)
main.add_command(labels_command)
main.add_command(sets)
