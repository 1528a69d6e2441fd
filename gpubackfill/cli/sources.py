"""``gpubackfill source``: candles where they already live.  Add, list,
show, check and remove sources; a job reads one with ``start --source``."""

from __future__ import annotations

import json

import click

from ._common import _console, _iso, _service


@click.group(name="source")
def source() -> None:
    """Sources: ClickHouse tables, views or files read in place as candles."""


@source.command(name="add")
@click.argument("name")
@click.option("--from", "relation", required=True, metavar="RELATION",
              help="db.table, or file(...), s3(...), url(...), remote(...), clusterAllReplicas(...).")
@click.option("--map", "maps", multiple=True, metavar="OURS=THEIRS",
              help="instrument, ts, open, high, low, close (required), volume, granularity.")
@click.option("--granularity", default=None, help="Every row's granularity (or --map granularity=COL).")
@click.option("--ts-unit", type=click.Choice(["s", "ms", "us", "ns"]), default=None,
              help="Unit of an integer epoch ts.")
@click.option("--tz", default=None, help="Zone of wall-clock times whose column names none.")
@click.option("--where", default=None, help="Only the rows where this ClickHouse expression holds.")
@click.option("--clickhouse-url", default=None, help="The ClickHouse that holds it (default: the store's).")
@click.option("--day-start", default=None, metavar="HH:MM", help="Start of the day of derived D1/W1 bars.")
@click.option("--day-tz", default=None, help="Zone of --day-start (default UTC).")
@click.pass_context
def add(ctx, name, relation, maps, granularity, ts_unit, tz, where, clickhouse_url, day_start,
        day_tz) -> None:
    """Register a source after checking its columns, types and --where."""
    src = _service(ctx).sources.add(name, relation, list(maps), granularity=granularity, ts_unit=ts_unit,
                                   tz=tz, where=where, clickhouse_url=clickhouse_url,
                                   day_start=day_start, day_tz=day_tz)
    click.echo(f"source {src.name}: {src.relation}; stores {','.join(src.stored)}"
               + (f", derives {','.join(src.derived())}" if src.derived() else ""))


@source.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def list_(ctx, fmt: str) -> None:
    """Every registered source."""
    found = _service(ctx).sources.all()
    if fmt == "json":
        click.echo(json.dumps([json.loads(s.to_json()) for s in found], indent=2))
        return
    if not found:
        click.echo("no sources (add one with `gpubackfill source add`)")
        return
    from rich.table import Table

    t = Table("source", "from", "stores", "derives")
    for s in found:
        t.add_row(s.name, s.relation, ",".join(s.stored), ",".join(s.derived()))
    _console().print(t)


@source.command(name="show")
@click.argument("name")
@click.pass_context
def show(ctx, name: str) -> None:
    """A source's definition, as JSON."""
    s = _service(ctx).sources.get(name)
    click.echo(json.dumps({**json.loads(s.to_json()), "derived": list(s.derived())}, indent=2))


@source.command(name="check")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def check(ctx, name: str, fmt: str) -> None:
    """Per-series counts and the problems found: duplicates, malformed candles."""
    rows = _service(ctx).sources.check(name)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        from rich.table import Table

        t = Table("series", "candles", "first", "last", "problems")
        for r in rows:
            t.add_row(f"{r['instrument']} {r['granularity']}", f"{r['candles']:,}", _iso(r["first"]),
                      _iso(r["last"]), "; ".join(r["problems"]) or "none")
        _console().print(t)
    if any(r["problems"] for r in rows):
        ctx.exit(1)


@source.command(name="remove")
@click.argument("name")
@click.pass_context
def remove(ctx, name: str) -> None:
    """Forget a source (labels computed from it stay)."""
    _service(ctx).sources.remove(name)
    click.echo(f"source {name} removed")
