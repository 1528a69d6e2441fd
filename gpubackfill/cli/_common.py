"""What every command shares: the service, the console, option parsing, formatting."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ..common.times import iso
from ..errors import InvalidInput
from ..jobs.eta import rate_text  # noqa: F401 - re-exported for the commands


def _console():
    from rich.console import Console

    # Piped output (a log, grep) has no terminal to fit: rich would fold
    # every table into 80 columns.  COLUMNS still wins when set.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(width=wide)


def _service(ctx: click.Context):
    if "service" not in ctx.obj:
        from ..config import Settings
        from ..service import BackfillService

        ctx.obj["service"] = BackfillService(Settings.from_env())
    return ctx.obj["service"]


def _store_service(ctx: click.Context):
    """The service for a command that needs ClickHouse: this process's own,
    or, while another live process holds the embedded store (a ``serve``, a
    running ``start``/``execute``), a stand-in that runs the same operations
    there (``serve/holder.py``)."""
    if "store_service" not in ctx.obj:
        from ..config import Settings
        from ..serve import holder

        remote = holder.remote(Settings.from_env())
        if remote is not None:
            click.echo(f"the embedded store is held by {remote.describe()}: running this there",
                       err=True)
        ctx.obj["store_service"] = remote or _service(ctx)
    return ctx.obj["store_service"]


def _sharing(ctx: click.Context, command: str, required: bool = True):
    """While this command holds the embedded store, other processes reach it through us."""
    from ..serve.holder import sharing

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


def _iso(ms: int) -> str:
    return iso(ms) or ""


def _last_day(end: str) -> str:
    """The last day a range includes: its end is exclusive, so an end at
    midnight (a date given as --end-date) shows the day before."""
    from datetime import date, timedelta

    if end.endswith("T00:00:00Z"):
        return (date.fromisoformat(end[:10]) - timedelta(days=1)).isoformat()
    return end[:10]


def _eta_text(s: dict) -> str:
    """``120s (90-150s, conf 0.82)``: the ETA, its 90% interval and
    confidence; ``paused`` for a paused job, ``-`` where none is known."""
    if s["status"] == "paused":
        return "paused"
    if s["eta_s"] is None:
        return "-"
    e = s.get("eta") or {}
    if s["status"] != "running" or e.get("low_s") is None:
        return f"{s['eta_s']:.0f}s"
    return f"{s['eta_s']:.0f}s ({e['low_s']:.0f}-{e['high_s']:.0f}s, conf {e['confidence']:.2f})"


def _plural(n: int, word: str, many: str = "") -> str:
    """``1 chunk``, ``0 chunks``, ``1,200 chunks``."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _say_skipped(s: dict) -> None:
    if s.get("skipped"):
        click.echo(f"skipped (no candles in the range): {', '.join(s['skipped'])}", err=True)



def _listed(rows: Any, fmt: str, empty: str) -> bool:
    """Print ``rows`` as JSON (``--format json``), or ``empty`` when there
    are none; True when that was all there was to print (no table)."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return True
    if not rows:
        click.echo(empty)
        return True
    return False
