"""``gpubackfill dlq``: look at, re-queue and forget dead-lettered chunks."""

from __future__ import annotations

import json
import time

import click

from ._common import _console, _listed, _plural, _service
from .run import _run_foreground


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


@click.group()
def dlq() -> None:
    """Dead-lettered chunks: those that failed for good (bad data, a bug, a
    persistent error, or retries exhausted)."""


@dlq.command("list")
@click.option("--job", "job_id", default=None, help="Only this job's entries.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def list_(ctx, job_id: str | None, fmt: str) -> None:
    """List dead-letter entries, oldest first."""

    entries = _service(ctx).dead_letters(job_id)
    if _listed(entries, fmt, "no dead-lettered chunks"):
        return
    from rich.table import Table

    t = Table("id", "category", "range", "attempts", "when", "message")
    for e in entries:
        t.add_row(e["id"], e["category"], f"{_when(e['start_ms'])}..{_when(e['end_ms'])}",
                  str(e["attempts"]), _when(e["time_ms"]), e["message"][:120])
    _console().print(t)


@dlq.command()
@click.argument("entry_id")
@click.pass_context
def show(ctx, entry_id: str) -> None:
    """One entry in full (JSON), with the chunk's last error and traceback."""

    click.echo(json.dumps(_service(ctx).dead_letter(entry_id), indent=2))


def _selection(entry_ids: tuple[str, ...], job_id: str | None, all_: bool) -> None:
    if sum((bool(entry_ids), job_id is not None, all_)) != 1:
        raise click.UsageError("name entries, or give exactly one of --job JOB_ID or --all")


@dlq.command()
@click.argument("entry_ids", nargs=-1)
@click.option("--job", "job_id", default=None, help="Every entry of this job.")
@click.option("--all", "all_", is_flag=True, help="Every entry.")
@click.option("--detach", is_flag=True, help="Only re-queue; run later with `execute`.")
@click.pass_context
def retry(ctx, entry_ids: tuple[str, ...], job_id: str | None, all_: bool, detach: bool) -> None:
    """Re-queue dead-lettered chunks after a fix, and run their jobs."""

    _selection(entry_ids, job_id, all_)
    svc = _service(ctx)
    jobs = svc.retry_dead_letters(list(entry_ids) or None, job_id)
    if not jobs:
        click.echo("nothing to retry")
        return
    for jid, n in jobs.items():
        click.echo(f"job {jid}: {_plural(n, 'chunk')} re-queued")
    if detach:
        return
    for jid in jobs:
        status = svc.job(jid).model_dump()["status"]
        if status in ("completed_with_errors", "failed", "interrupted", "queued"):
            _run_foreground(svc, jid, None)
        else:
            click.echo(f"job {jid} is {status}: its driver picks the chunks up")


@dlq.command()
@click.argument("entry_ids", nargs=-1)
@click.option("--job", "job_id", default=None, help="Every entry of this job.")
@click.option("--all", "all_", is_flag=True, help="Every entry.")
@click.pass_context
def purge(ctx, entry_ids: tuple[str, ...], job_id: str | None, all_: bool) -> None:
    """Forget entries (their chunks stay failed)."""

    _selection(entry_ids, job_id, all_)
    n = _service(ctx).purge_dead_letters(list(entry_ids) or None, job_id)
    click.echo(f"purged {n} entr{'y' if n == 1 else 'ies'}")
