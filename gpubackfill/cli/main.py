"""The ``gpubackfill`` command group and the store and service commands;
the job, dead-letter and catalog commands live in their own modules and are
added here (they import nothing from this one, so there is no cycle).

Every user mistake ends in one line on stderr and a non-zero exit (2 for a
bad request, 1 for an unreachable or failing dependency); never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DependencyError, GpubackfillError, InvalidInput
from . import catalog, dlq, jobs, sources
from ._common import _console, _Greedy, _iso, _labels, _params, _service, _sharing, _store_service


class _UsageLine(click.ClickException):
    """Click's own usage errors (an unknown option, a bad choice, a folder
    where a file is expected) in the form of every other user mistake: one
    ``error:`` line and exit 2, not click's usage block."""

    exit_code = 2

    def __init__(self, exc: click.UsageError):
        message = " ".join(exc.format_message().split())
        where = exc.ctx.command_path if exc.ctx is not None else "gpubackfill"
        super().__init__(f"{message} (see {where} --help)")

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _one_line(exc: click.UsageError) -> click.ClickException:
    # With no arguments a group shows its help: that is no mistake to report.
    return exc if isinstance(exc, click.exceptions.NoArgsIsHelpError) else _UsageLine(exc)


class _Group(click.Group):
    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # the subcommand's, raised while parsing its arguments
            raise _one_line(exc) from None
        except InvalidInput as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except DependencyError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except GpubackfillError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


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

    from ..common import logs

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
@click.option("--columns", default=None, metavar="NAMES|FIELD=COLUMN,...",
              help="Names for a headerless file's columns (date,time,open,high,low,close,volume), "
                   "or which column is which (time=Gmt time,open=Open).")
@click.option("--date-format", default=None, metavar="FORMAT",
              help="strftime format of text times, e.g. '%d.%m.%Y %H:%M:%S.%f' (default: recognised).")
@click.option("--sep", default=None, help="CSV field separator: ',', ';', '|' or 'tab' (default: guessed).")
@click.option("--decimal", default=None, type=click.Choice([".", ","]),
              help="Decimal mark of CSV numbers (default: ',' when the separator is not and prices "
                   "read 1,0716).")
@click.option("--max-rejects", default="0", show_default=True, metavar="N|P%",
              help="Rejected rows allowed; over it nothing is written.")
@click.option("--rejects", "rejects", default=None, type=click.Path(dir_okay=False),
              help="Write every rejected row (row, line, values, reason) to this CSV file.")
@click.pass_context
def ingest(ctx: click.Context, path: str, instrument: str, granularity: str, tz: str | None,
           columns: str | None, date_format: str | None, sep: str | None, decimal: str | None,
           max_rejects: str, rejects: str | None) -> None:
    """Load candles from a CSV or Parquet file (idempotent).

    A file with rejected rows (broken candles, duplicates) is refused and
    nothing is written, unless --max-rejects allows that many."""
    if not Path(path).exists():
        raise InvalidInput(f"no such file: {path}")
    report = _store_service(ctx).ingest(path, instrument, granularity, tz, columns=columns,
                                        date_format=date_format, sep=sep, decimal=decimal,
                                        max_rejects=max_rejects, rejects=rejects)
    if report.sorted:
        click.echo("the rows were not in time order (newest first?): sorted them by time")
    n = len(report.rejected)
    listed = f" (all listed in {rejects})" if rejects and n else ""
    click.echo(f"read {report.rows_read} rows: {report.inserted} inserted, {report.updated} updated, "
               f"{report.unchanged} already present, {n} rejected{listed}")
    if rejects:
        return
    for row, ts, reason in report.rejected[:20]:
        click.echo(f"  rejected row {row} (ts {_iso(ts)}): {reason}")
    if n > 20:
        click.echo(f"  ... and {n - 20} more (--rejects FILE lists them all)")


@main.command()
@click.option("--instrument", required=True, multiple=True,
              help="Instrument(s): several, or '*' (every one with those labels), make one long "
                   "file with instrument and granularity columns.")
@click.option("--granularity", required=True, multiple=True, help="Granularity(ies), e.g. M5 or M5,H1.")
@click.option("--labels", cls=_Greedy,
              help="Label names to export: a set's, or some of them (default: the series' only set).")
@click.option("--param", "params", multiple=True, metavar="LABEL.KEY=VALUE",
              help="A parameter the job used, e.g. enhanced_triple_barrier.horizon=48.")
@click.option("--set", "set_id", default=None, help="A label set id (see `gpubackfill sets`).")
@click.option("--with-candles", is_flag=True, help="Add open, high, low, close, volume after ts.")
@click.option("--with-t1", is_flag=True,
              help="Add t1 after ts: each row's event end, the time of its exit bar "
                   "(needs enhanced_triple_barrier; NULL where tb_exit_bars is).")
@click.option("--start-date", default=None)
@click.option("--end-date", default=None)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .parquet or .csv")
@click.option("--source", default=None, help="Labels computed from this source (default: the built-in table).")
@click.pass_context
def export(ctx, instrument, granularity, labels, params, set_id, with_candles, with_t1, start_date,
           end_date, output, source) -> None:
    """Write a computed label set (ts first) to Parquet or CSV for training.

    Parquet keeps ts as a UTC timestamp and records the instrument, the
    granularity and every label's parameters in its metadata; CSV writes
    ts as ISO 8601 text.  Several series make one long file (a panel) with
    instrument and granularity before ts."""
    suffix = Path(output).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InvalidInput(f"output must end in .parquet or .csv, got {output!r}")
    folder = Path(output).absolute().parent
    if not folder.is_dir():
        raise InvalidInput(f"no folder {folder} for {output}")
    if Path(output).is_dir():
        raise InvalidInput(f"{output} is a folder")
    rows, cols, chosen = _store_service(ctx).export_file(
        output, list(instrument), list(granularity), _labels(labels), _params(params), start_date, end_date,
        set_id, with_candles, with_t1=with_t1, source=source)
    click.echo(f"wrote {rows:,} rows x {cols} columns of label set {chosen} to {output}")


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
@click.option("--insecure", is_flag=True,
              help="Listen beyond loopback without GPUBACKFILL_API_TOKEN: anyone who reaches the port "
                   "can start and cancel jobs.")
@click.pass_context
def serve(ctx, host: str | None, port: int | None, max_jobs: int | None, insecure: bool) -> None:
    """Run the REST API (/jobs, /metrics, /health) and the job scheduler.

    Ctrl-C or SIGTERM stops it: running jobs are interrupted between chunks
    (a later serve resumes them) and it exits 0."""
    if max_jobs is not None and max_jobs < 1:
        raise InvalidInput(f"--max-jobs must be >= 1, got {max_jobs}")
    if port is not None and not 0 < port < 65536:
        raise InvalidInput(f"--port must be 1..65535, got {port}")
    import os

    from ..common import logs
    from ..serve.api import listen, loopback
    from ..serve.api import serve as run

    if not ctx.obj.get("verbose") and not os.environ.get("LOG_LEVEL"):
        logs.log.setLevel("INFO")  # a service logs its job events unless told otherwise
    svc = _service(ctx)
    host = host or svc.settings.api_host
    port = port or svc.settings.api_port
    # Writes on an open port must be a choice.
    open_port = not svc.settings.api_token and loopback(host) is False
    if open_port and not insecure:
        raise InvalidInput(f"{host} is not a loopback address and GPUBACKFILL_API_TOKEN is not set: "
                           f"anyone who reaches port {port} could start and cancel jobs; set the "
                           f"token, or add --insecure to serve without one")
    sock = listen(host, port)
    if open_port:
        click.echo(f"warning: serving on {host}:{port} without GPUBACKFILL_API_TOKEN: anyone who "
                   f"reaches it can start, pause and cancel jobs", err=True)
    click.echo(f"serving on http://{host}:{port} (docs: /docs, metrics: /metrics, health: /health)",
               err=True)
    # Not required: a store held elsewhere shows in /health and in the jobs.
    with _sharing(ctx, "serve", required=False):
        run(svc, host, port, max_jobs, sock=sock)


@main.command()
@click.option("--force", is_flag=True, help="Stop it even while a job runs (the job then fails over).")
def stop(force: bool) -> None:
    """Stop the bundled redis-server of this GPUBACKFILL_HOME (started on first use).

    Its data stays on disk; the next command starts it again."""
    from ..config import Settings
    from ..storage.redis_server import server_running, stop_server

    settings = Settings.from_env()
    if not settings.embedded_redis:
        click.echo("nothing to stop: REDIS_URL is set, and that Redis is not ours to stop")
        return
    if not server_running(settings.redis_dir):
        click.echo(f"no bundled redis-server is running for {settings.home}")
        return
    if not force:
        from ..service import BackfillService

        busy = [s.job_id for s in BackfillService(settings).jobs("running", 0) if not s.driver.gone]
        if busy:
            raise InvalidInput(f"job(s) {', '.join(busy)} are running on it; pause or cancel them "
                               f"first, or use --force")
    stop_server(settings.redis_dir)
    click.echo(f"stopped the bundled redis-server of {settings.home}")


@main.command()
@click.option("--instruments", default="EURUSD,GBPUSD,USDJPY", show_default=True,
              help="Synthetic models to run; each is stored as DEMO.<name>.")
@click.option("--granularity", default="M1", show_default=True)
@click.option("--years", type=float, default=2.0, show_default=True)
@click.option("--workers", type=int, default=None)
@click.pass_context
def demo(ctx, instruments: str, granularity: str, years: float, workers: int | None) -> None:
    """Generate synthetic candles, ingest them, and backfill every label.

    The demo writes only series of its own, DEMO.EURUSD and so on; series
    you ingested are left as they are."""
    from .demo import run_demo

    with _sharing(ctx, "demo"):
        run_demo(_service(ctx), [i.strip() for i in instruments.split(",") if i.strip()],
                 granularity, years, workers, _console())



for command in (jobs.start, jobs.update, jobs.series_cmd, jobs.execute, jobs.status, jobs.monitor,
                jobs.pause, jobs.resume, jobs.cancel, jobs.cleanup, dlq.dlq, catalog.labels,
                catalog.sets, sources.source):
    main.add_command(command)
