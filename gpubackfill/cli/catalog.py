"""``gpubackfill labels`` and ``gpubackfill sets``: what can be computed, and
what has been, so that nobody has to read the source to write ``--param`` or
to find the label set an export should name."""

from __future__ import annotations

import json

import click

from ._common import _console, _iso, _store_service


@click.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def labels(fmt: str) -> None:
    """The label registry: parameters (defaults, ranges) and output columns."""
    from ..labels import catalog

    entries = catalog.describe()
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    from rich.table import Table

    console = _console()
    for e in entries:
        console.print(f"[bold]{e['name']}[/bold]: {e['doc']}")
        p = Table("--param", "default", "range", "meaning")
        p.columns[0].no_wrap = True
        for x in e["params"]:
            default = ",".join(map(str, x["default"])) if isinstance(x["default"], list) else x["default"]
            p.add_row(f"{e['name']}.{x['name']}=", str(default), catalog.param_range(x), x["doc"])
        console.print(p)
        o = Table("column", "type", "meaning")
        for x in e["outputs"]:
            o.add_row(x["name"], x["type"], x["meaning"])
        console.print(o)


@click.command()
@click.option("--instrument", default=None)
@click.option("--granularity", default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--source", default=None, help="Label sets computed from this source (default: the built-in table).")
@click.pass_context
def sets(ctx, instrument: str | None, granularity: str | None, fmt: str, source: str | None) -> None:
    """Computed label sets per series: labels, parameters, rows (for export --set)."""

    found = _store_service(ctx).label_sets(instrument, granularity, source=source)
    if fmt == "json":
        click.echo(json.dumps([{"instrument": s.series[0], "granularity": s.series[1],
                                "label_set": s.set_id, "labels": s.params,
                                "changed": s.changed(), "rows": s.rows,
                                "first": _iso(s.span[0]), "last": _iso(s.span[1])}
                               for s in found], indent=2))
        return
    if not found:
        click.echo("no label sets computed" + (" for that series" if instrument or granularity else ""))
        return
    from rich.table import Table

    t = Table("series", "set", "labels", "rows", "first", "last")
    for column in t.columns:
        column.overflow = "fold"
    for i in (1, 3, 4, 5):  # the id is what export --set takes
        t.columns[i].no_wrap = True
    for s in found:
        t.add_row(f"{s.series[0]} {s.series[1]}", s.set_id, s.describe().rsplit(" (--set", 1)[0],
                  f"{s.rows:,}", _iso(s.span[0])[:10], _iso(s.span[1])[:10])
    _console().print(t)
    click.echo("labels show the parameters that differ from their defaults "
               "(`gpubackfill labels`); export one with: gpubackfill export --instrument I "
               "--granularity G --set ID -o FILE")
