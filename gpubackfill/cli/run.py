"""A job in the foreground: progress bar, signals, the closing summary and exit code."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import click

from ._common import _console, _plural, rate_text


class _HardStop(BaseException):
    """A second SIGINT/SIGTERM: stop now (BaseException so nothing swallows it)."""


def _run_foreground(svc, job_id: str, scheduler: str | None) -> None:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    stop = threading.Event()
    hard = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    previous_hook = sys.unraisablehook
    received: list[int] = []

    def on_signal(signum, frame):
        if stop.is_set():
            # Raised wherever the main thread is.  Where that is a __del__
            # (a Dask future released by the collector), Python prints the
            # exception and drops it: the driver's next turn raises it again
            # (``progress`` below), so the second signal still stops at once.
            hard.set()
            raise _HardStop()
        received.append(signum)
        stop.set()
        click.echo("\nstopping: no new chunks; running ones finish or go back to the queue "
                   "(signal again to exit now)", err=True)

    def unraisable(args) -> None:
        if not isinstance(args.exc_value, _HardStop):  # a dropped _HardStop is raised again
            previous_hook(args)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sys.unraisablehook = unraisable
    console = _console()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=console,
                      transient=False, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task(job_id, total=None, rate="", count="")
            dashboards: set[str] = set()

            def progress(s: dict) -> None:
                if hard.is_set():
                    raise _HardStop()  # the signal's own raise was dropped (see on_signal)
                if s["dashboard"] and s["dashboard"] not in dashboards:
                    dashboards.add(s["dashboard"])
                    click.echo(f"dask dashboard: {s['dashboard']}")
                bar.update(task, total=s["candles_total"], completed=s["candles_done"],
                           description=f"{job_id} {s['status']}",
                           count=f"{s['candles_done']:,}/{s['candles_total']:,}",
                           rate=f"{rate_text(s['throughput_per_min'])} candles/min")

            before, t0 = svc.job(job_id).model_dump(), time.monotonic()
            svc.execute(job_id, progress=progress, scheduler=scheduler, stop=stop)
        _report(svc, job_id, received, before, time.monotonic() - t0)
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
        sys.unraisablehook = previous_hook
        # Kept until the outcome is reported: the job can stop within
        # milliseconds of the first signal, and a second one meanwhile still
        # exits at once.  After a signal the command is on its way out with
        # the exit status the first one asked for, so later ones are ignored
        # rather than raising KeyboardInterrupt in the unwinding ("Aborted!",
        # exit 1); without one, the previous handlers come back.
        if received:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _report(svc, job_id: str, received: list[int], before: dict | None = None,
            seconds: float = 0.0) -> None:
    """The job's outcome in one line (and, for a job run before, what this
    run did apart from its totals), and the exit status it calls for."""
    s = svc.job(job_id).model_dump()
    click.echo(f"{job_id} {s['status']}: {work_summary(s)}")
    if before is not None and before["chunks"]["done"]:
        click.echo(_this_run(before, s, seconds))
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


def work_summary(s: dict) -> str:
    """What a run did: candles computed (and their rate) apart from the ones
    skipped because their labels were already computed from the same candles."""
    skipped = s["candles_skipped"]
    computed = s["candles_done"] - skipped
    chunks = s["chunks"]["done"] - s["cache_hits"]
    text = f"{s['rows_written']:,} label rows written"
    if computed or not skipped:
        text = (f"{computed:,} candles computed in {_plural(chunks, 'chunk')}, {text}, "
                f"{rate_text(s['throughput_per_min'])} candles/min")
    else:
        text = f"nothing to compute, {text}"
    if skipped:
        whole = f" in {_plural(s['cache_hits'], 'chunk')}" if s["cache_hits"] else ""
        text += f"; {skipped:,} candles skipped{whole} (labels already computed from the same candles)"
    return text


def _this_run(before: dict, after: dict, seconds: float) -> str:
    """``this run: 12 chunks, 1,200,000 candles in 3.1 s; job total: 40/40
    chunks``: a resumed job's counters hold every run's work."""
    chunks = after["chunks"]["done"] - before["chunks"]["done"]
    candles = after["candles_done"] - before["candles_done"]
    rate = f" ({rate_text(candles / seconds * 60)} candles/min)" if seconds > 0 and candles else ""
    return (f"this run: {_plural(chunks, 'chunk')}, {_plural(candles, 'candle')} in {seconds:.1f} s{rate}; "
            f"job total: {after['chunks']['done']:,}/{_plural(after['chunks_total'], 'chunk')}, "
            f"{after['candles_done']:,}/{_plural(after['candles_total'], 'candle')}")
