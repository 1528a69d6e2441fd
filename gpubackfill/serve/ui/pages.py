"""The console's routes: HTML pages, the job page's live fragment, and the
few actions the REST API has no route for (dry run, update, dead letters)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field

from ...errors import GpubackfillError, InvalidInput, JobNotFound
from ...jobs.machine import FINAL_JOB_STATES, JOB_STATES
from ..requests import JobRequest
from . import chart, history

if TYPE_CHECKING:
    from ...service import BackfillService
    from ..scheduler import Scheduler

HERE = os.path.dirname(__file__)
STATIC_DIR = os.path.join(os.path.dirname(HERE), "static", "ui")
PAGE_SIZE = 20
EVENTS_SHOWN = 20
SERIES_SHOWN = 200  # series a job page shows at once (the others a page further)


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instrument: str = Field(min_length=1, max_length=64)
    granularity: str = Field(min_length=1, max_length=16)
    source: str | None = Field(default=None, max_length=64)  # None: the built-in table


class DeadLetterRequest(BaseModel):
    """Entries by id, or every entry of a job (of one of its series)."""
    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = Field(default=None, max_length=1000)
    job_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$")
    series: int | None = Field(default=None, ge=0)


def _utc(value: str | int | None) -> str:
    """An ISO time or epoch ms as ``2024-01-31 00:00:00 UTC``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value / 1000))
    return str(value).replace("T", " ").replace("Z", " UTC")


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(os.path.join(HERE, "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters.update(utc=_utc, num=_num, duration=_duration)
    env.globals.update(final_states=FINAL_JOB_STATES)
    return env


def bar_parts(done: int, running: int, failed: int, total: int) -> list[tuple[str, int, float]]:
    """The shares of a progress bar: (state, count, percent), in drawing order."""
    pending = max(total - done - running - failed, 0)
    total = max(total, 1)
    return [(name, n, 100.0 * n / total) for name, n in
            (("done", done, ), ("running", running), ("failed", failed), ("pending", pending))]


def _grid(job) -> dict[str, Any]:
    """The page of series the job view lists, by instrument and granularity;
    each cell with its series' index in the job."""
    insts = list(dict.fromkeys(s.instrument for s in job.series))
    grans = list(dict.fromkeys(s.granularity for s in job.series))
    cells = {(s.instrument, s.granularity): (job.series_offset + i, s) for i, s in enumerate(job.series)}
    return {"instruments": insts, "granularities": grans, "cells": cells}


def mount(app: FastAPI, service: BackfillService, authorised: Callable[..., None],
          scheduler: Scheduler | None = None) -> None:
    """Add the console's routes and static files to the API's app."""
    env = environment()
    router = APIRouter(include_in_schema=False)

    def page(name: str, http_status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("api_token_set", bool(service.settings.api_token))
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=http_status)

    def failure(exc: GpubackfillError) -> HTMLResponse:
        code = 404 if isinstance(exc, JobNotFound) else 422 if isinstance(exc, InvalidInput) else 503
        return page("error.html", http_status=code, code=code, message=str(exc))

    def job_context(job_id: str, series_offset: int = 0) -> dict[str, Any]:
        samples = service.telemetry.samples(job_id)   # before the counters, as job_status reads them
        job = service.job(job_id, series_offset, SERIES_SHOWN)
        c = job.chunks
        # Chunks re-queued (dead letters retried) wait for the job to run again: keep watching.
        final = job.status in FINAL_JOB_STATES and not c.pending
        return {"job": job, "parts": bar_parts(c.done, c.leased, c.failed, job.chunks_total),
                "grid": _grid(job), "final": final, "series_shown": SERIES_SHOWN,
                "events": list(reversed(service.state.events(job_id, EVENTS_SHOWN))),
                # A final job has nothing left: the failed chunks' candles will not run.
                "history": history.charts(samples, 0 if final else job.candles_total - job.candles_done,
                                          job.workers, None if final else int(time.time() * 1000)),
                "stage_total": sum(v for k, v in job.stages.items() if k != "total") or 1.0}

    @router.get("/")
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui")
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @router.get("/ui/", response_class=HTMLResponse)
    def jobs_page(status: str | None = Query(default=None), page_no: int = Query(default=1, alias="page", ge=1)
                  ) -> HTMLResponse:
        if status not in (None, "", *JOB_STATES):
            return page("error.html", http_status=422, code=422,
                        message=f"unknown status {status!r}: use one of {', '.join(JOB_STATES)}")
        try:
            jobs = service.jobs(status or None, series_limit=0)  # the list counts series, lists none
        except GpubackfillError as exc:
            return failure(exc)
        jobs.sort(key=lambda j: j.created or "", reverse=True)
        pages = max(1, -(-len(jobs) // PAGE_SIZE))
        shown = jobs[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE]
        rows = [(j, bar_parts(j.chunks.done, j.chunks.leased, j.chunks.failed, j.chunks_total)) for j in shown]
        dashboards = sorted({j.dashboard for j in jobs if j.dashboard})
        return page("jobs.html", rows=rows, status=status or "", states=JOB_STATES, page_no=page_no,
                    pages=pages, total=len(jobs), dashboards=dashboards)

    def job_html(template: str, job_id: str, series_offset: int) -> HTMLResponse:
        try:
            return page(template, **job_context(job_id, series_offset))
        except GpubackfillError as exc:
            return failure(exc)

    @router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str, series_offset: int = Query(default=0, alias="series", ge=0)) -> HTMLResponse:
        return job_html("job.html", job_id, series_offset)

    @router.get("/ui/jobs/{job_id}/live", response_class=HTMLResponse)
    def job_live(job_id: str, series_offset: int = Query(default=0, alias="series", ge=0)) -> HTMLResponse:
        """The part of the job page that polling replaces."""
        return job_html("job_live.html", job_id, series_offset)

    @router.get("/ui/new", response_class=HTMLResponse)
    def new_job_page() -> HTMLResponse:
        return page("new.html")

    @router.get("/ui/series", response_class=HTMLResponse)
    def series_page() -> HTMLResponse:
        try:
            # (source, coverage): the built-in table's series, then each source's.
            series = [("", s) for s in service.series_overview()]
            for src in service.sources.all():
                series += [(src.name, s) for s in service.series_overview(source=src.name)]
        except GpubackfillError as exc:
            return failure(exc)
        sets: dict[str, list[str]] = {}
        for _, s in series:
            for c in s.sets:
                sets.setdefault(c.set_id, c.labels)
        cells = {(src, s.instrument, s.granularity, c.set_id): c for src, s in series for c in s.sets}
        return page("series.html", series=series, sets=sets, cells=cells)

    @router.get("/ui/series/{instrument}/{granularity}", response_class=HTMLResponse)
    def chart_page(instrument: str, granularity: str, set_id: str | None = Query(default=None, alias="set"),
                   start: str | None = Query(default=None, alias="from"),
                   end: str | None = Query(default=None, alias="to"),
                   source: str | None = Query(default=None, max_length=64)) -> HTMLResponse:
        try:
            sets = service.label_sets(instrument, granularity, source=source or None)
            data = chart.window(service, instrument, granularity, set_id, start, end, source)
        except GpubackfillError as exc:
            return failure(exc)
        return page("chart.html", data=data, sets=sets, set_id=set_id or "", start=start or "", end=end or "")

    @router.get("/ui/dlq", response_class=HTMLResponse)
    def dlq_page(job_id: str | None = Query(default=None, alias="job", pattern=r"^[0-9a-f]{12}$")) -> HTMLResponse:
        try:
            entries = service.dead_letters(job_id)
        except GpubackfillError as exc:
            return failure(exc)
        return page("dlq.html", entries=entries, job_id=job_id or "")

    @router.get("/ui/api/chart/{instrument}/{granularity}")
    def chart_data(instrument: str, granularity: str, set_id: str | None = Query(default=None, alias="set"),
                   start: str | None = Query(default=None, alias="from"),
                   end: str | None = Query(default=None, alias="to"),
                   source: str | None = Query(default=None, max_length=64)) -> dict[str, Any]:
        return chart.window(service, instrument, granularity, set_id, start, end, source)

    @router.post("/ui/api/preview")
    def preview(req: JobRequest) -> dict[str, Any]:
        """What POST /jobs would queue (the same planning code), queueing nothing."""
        return service.preview_job(**req.job_args())

    @router.post("/ui/api/update", dependencies=[Depends(authorised)])
    def update(req: UpdateRequest) -> dict[str, Any]:
        return {"jobs": service.plan_update(req.instrument, req.granularity, source=req.source)}

    def dead_selection(req: DeadLetterRequest) -> list[str] | None:
        if req.ids:
            return req.ids
        if req.job_id is None:
            raise InvalidInput("name dead-letter entries, or a job")
        if req.series is None:
            return None
        ids = [e["id"] for e in service.dead_letters(req.job_id) if req.series in (e.get("series") or [])]
        if not ids:
            raise InvalidInput(f"series {req.series} of job {req.job_id} has no dead-letter entries")
        return ids

    @router.post("/ui/api/dlq/retry", dependencies=[Depends(authorised)])
    def dlq_retry(req: DeadLetterRequest) -> dict[str, Any]:
        """Re-queue the chunks; a finished job is then run again by the
        scheduler (``gpubackfill dlq retry`` runs it in the foreground)."""
        requeued = service.retry_dead_letters(dead_selection(req), req.job_id)
        again = [j for j in requeued if scheduler is not None and scheduler.run_again(j)]
        return {"requeued": requeued, "run_again": again}

    @router.post("/ui/api/dlq/purge", dependencies=[Depends(authorised)])
    def dlq_purge(req: DeadLetterRequest) -> dict[str, Any]:
        return {"purged": service.purge_dead_letters(dead_selection(req), req.job_id)}

    app.include_router(router)
    app.mount("/static/ui", StaticFiles(directory=STATIC_DIR), name="ui")
