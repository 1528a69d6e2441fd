"""BackfillService: the one object the CLI (and the REST API) drive.

Operations: init, ingest, start (one or many series), update, execute,
pause, resume, cancel, job(s), series, metrics, cleanup, export, dead
letters.  A thin facade: a job's spec and plan are in ``jobs/``, queueing
and running it in ``engine/submit.py`` and ``engine/launch.py``, the read
models in ``engine/views.py``.  Job state lives in Redis; candles and labels in
ClickHouse; chunks run on Dask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from .common import logs
from .common.granularity import parse_granularity, parse_instrument
from .config import Settings
from .engine import launch, submit, views
from .engine.launch import RunResult
from .errors import InvalidInput
from .jobs.machine import FINAL_JOB_STATES
from .jobs.spec import ALL, JobSpec, make_spec, parse_names
from .sources.catalog import Sources
from .storage.clickhouse_store import IngestReport, SeriesKey
from .storage.connections import connections
from .storage.redis import now_ms
from .storage.telemetry import Telemetry

__all__ = ["BackfillService", "RunResult"]

Progress = Callable[[dict[str, Any]], None]


class BackfillService:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self.store, self.state = connections(self.settings)
        self.telemetry = Telemetry(self.state)
        self._schema_ready = False
        # Candles read where they already live: add, list, get, check, remove.
        self.sources = Sources(self.store, self._ready)

    # -- storage -----------------------------------------------------------

    def init(self) -> None:
        self.store.init_schema()
        self._schema_ready = True

    def _ready(self) -> None:
        if not self._schema_ready:
            self.init()

    def ingest(self, path: str | Path, instrument: str, granularity: str,
               tz: str | None = None, *, columns: str | None = None, date_format: str | None = None,
               sep: str | None = None, decimal: str | None = None, max_rejects: str | int = 0,
               rejects: str | Path | None = None) -> IngestReport:
        """Ingest a CSV or Parquet file, in batches (``gpubackfill.storage.ingest``).
        ``columns``, ``date_format``, ``sep``, ``decimal``: how to read it
        (``candles.files.Layout``); more rejected rows than ``max_rejects``
        (a count or ``"P%"``) and nothing is written; ``rejects``: a CSV file
        for every rejected row."""
        from .candles.files import CandleFile, Layout
        from .storage import ingest as ingest_mod

        key = SeriesKey(parse_instrument(instrument), parse_granularity(granularity))
        layout = Layout.parse(columns, date_format, sep, decimal)
        limit = ingest_mod.RejectLimit.parse(max_rejects)
        ingest_mod.check_rejects_path(rejects, path)
        # a missing file or column is refused before the store opens
        CandleFile(path, tz=tz, layout=layout)
        self._ready()
        return ingest_mod.ingest_file(self.store, key, path, tz, layout=layout, max_rejects=limit,
                                      rejects=rejects)

    def ingest_table(self, key: SeriesKey, table: pa.Table, *, max_rejects: str | int = 0,
                     rejects: str | Path | None = None) -> IngestReport:
        from .storage import ingest as ingest_mod

        self._ready()
        return ingest_mod.ingest_table(self.store, key, table, max_rejects=max_rejects, rejects=rejects)

    # -- jobs (jobs/spec.py, jobs/plan.py; queued by engine/submit.py) --------

    def create_job(self, instrument: str | list[str], granularity: str | list[str],
                   start: Any = None, end: Any = None, labels: list[str] | None = None,
                   params: dict | None = None, chunk_size: int | None = None,
                   workers: int | None = None, priority: str = "normal", force: bool = False,
                   backend: str | None = None, min_workers: int | None = None,
                   source: str | None = None) -> str:
        """Plan a job over every (instrument, granularity) pair asked for that
        has candles in the range, and queue it; returns its id.  Pairs
        without candles there are skipped (``job`` lists them) unless no
        pair has any; an instrument without a single candle in the store is
        an error (a typo, most likely).  Without ``start`` (``end``) the job
        begins at the first (ends after the last) candle of its series.
        ``params``: typed values per label (a list for a list parameter).
        ``source``: read the candles from that registered source, not the
        built-in table."""
        spec = self._spec(instrument, granularity, start, end, labels, params, chunk_size, workers,
                          priority, force, backend, min_workers, source)
        return submit.backfill(self.store, self.state, self.settings, spec, start is None, end is None)

    def preview_job(self, instrument: str | list[str], granularity: str | list[str],
                    start: Any = None, end: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """What ``create_job`` with these arguments would queue, queueing
        nothing (``engine.submit.preview``: the same planning)."""
        spec = self._spec(instrument, granularity, start, end, *args, **kwargs)
        return submit.preview(self.store, self.settings, spec, start is None, end is None)

    def _spec(self, instrument, granularity, start, end, labels=None, params=None, chunk_size=None,
              workers=None, priority="normal", force=False, backend=None, min_workers=None,
              source=None) -> JobSpec:
        from .compute.backends import select

        spec = make_spec(instrument, granularity, start, end, labels, params, chunk_size,
                         self.settings.max_workers if workers is None else workers, priority, force,
                         backend or self.settings.backend, min_workers)
        select(spec.backend)  # a backend that cannot run here fails now, not per chunk
        self._ready()
        return replace(spec, source=self.source_name(source))

    def plan_update(self, instrument: str | list[str] | None = None,
                    granularity: str | list[str] | None = None, chunk_size: int | None = None,
                    workers: int | None = None, priority: str = "normal",
                    backend: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """Queue the daily update: for every label set already computed on
        the series asked for (default: all; of ``source``: that source's),
        one job over what is missing or stale (``coverage``).  Returns one
        entry per job queued ([] when everything is current): job id, label
        set, series, stale and new chunk counts."""
        self._ready()
        insts, grans = _selection(instrument, granularity)
        return submit.update(self.store, self.state, self.settings, insts, grans, chunk_size,
                             self.settings.max_workers if workers is None else workers, priority,
                             backend or self.settings.backend, self.source_name(source))

    def series_overview(self, instrument: str | None = None, granularity: str | None = None,
                        source: str | None = None) -> list:
        """The store's series (or a source's) with their candles and
        label-set coverage (``coverage.SeriesCoverage``)."""
        from .storage import coverage

        self._ready()
        return coverage.overview(self.store, *_selection(instrument, granularity), self.source_name(source))

    def source_name(self, name: str | None) -> str:
        """A registered source's name ('' for the built-in table; unknown: refused)."""
        return self.store.source(name).name if name else ""

    def writer_conflict(self, job_id: str, spec: JobSpec | None = None) -> tuple[str, str, str] | None:
        """The running job (id, status, series) that writes the same labels
        over a range this job covers, if any: this job must wait for it."""
        return launch.writer_conflict(self.state, job_id, spec or JobSpec.from_record(self.state.job(job_id)))

    def execute(self, job_id: str, progress: Progress | None = None,
                scheduler: str | None = None, stop: threading.Event | None = None) -> launch.RunResult:
        """Run (or resume) a job until it is settled, cancelled or stopped
        (``engine/launch.py``); ``progress`` gets the job's status as it goes."""
        tick = (lambda: progress(self.job(job_id).model_dump())) if progress else None
        return launch.execute(self.store, self.state, self.settings, job_id, tick, scheduler, stop)

    def start(self, *args, detach: bool = False, progress: Progress | None = None,
              scheduler: str | None = None, stop: threading.Event | None = None, **kwargs) -> str:
        job_id = self.create_job(*args, **kwargs)
        if not detach:
            self.execute(job_id, progress=progress, scheduler=scheduler, stop=stop)
        return job_id

    def pause(self, job_id: str) -> str:
        return self._transition(job_id, "pause")

    def resume(self, job_id: str) -> str:
        return self._transition(job_id, "resume")

    def cancel(self, job_id: str) -> str:
        status = self._transition(job_id, "cancel")
        if status == "cancelled" and self.state.driver_owner(job_id) is None:
            # A job no driver runs settles here: its copy of derived bars goes
            # now (a driver drops it when its running chunks have returned).
            launch.drop_bars(self.store, job_id)
        return status

    def _transition(self, job_id: str, event: str) -> str:
        status = self.state.transition(job_id, event)
        logs.job_event(job_id, status, event)
        return status

    # -- dead letters ------------------------------------------------------

    def dead_letters(self, job_id: str | None = None) -> list[dict[str, Any]]:
        return self.state.dead_letters_of(None, job_id)

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        return self.state.dead_letter_detail(entry_id)

    def retry_dead_letters(self, ids: list[str] | None = None, job_id: str | None = None
                           ) -> dict[str, int]:
        """Re-queue dead-lettered chunks (after a fix); chunks per job.  The
        jobs then need ``execute`` (unless a driver is running them)."""
        return self.state.retry_dead_letters(ids, job_id)

    def purge_dead_letters(self, ids: list[str] | None = None, job_id: str | None = None) -> int:
        """Forget entries; their chunks stay failed (the job stays completed_with_errors)."""
        return self.state.purge_dead_letters([e["id"] for e in self.state.dead_letters_of(ids, job_id)])

    # -- reading jobs (engine/views.py) ----------------------------------------

    def job(self, job_id: str, series_offset: int = 0,
            series_limit: int = views.SERIES_PAGE) -> views.JobStatus:
        """One job as ``status`` and ``GET /jobs/{id}`` show it, with a page
        of its series (``series_count`` says how many it has)."""
        return views.job_status(self.state, self.telemetry, job_id, series_offset, series_limit)

    def jobs(self, status: str | None = None, series_limit: int = views.SERIES_PAGE
             ) -> list[views.JobStatus]:
        """Every job (optionally of one status), oldest first, each with its
        first ``series_limit`` series."""
        return views.list_jobs(self.state, self.telemetry, status, series_limit)

    def metrics(self) -> dict[str, Any]:
        return views.metrics(self.state, self.telemetry)

    def cleanup(self, older_than_days: float, status: str | None = None) -> list[str]:
        """Remove finished jobs older than the cutoff from Redis (labels stay)."""
        if not 0 <= older_than_days < float("inf"):  # nan fails this too
            raise InvalidInput(f"--older-than must be a number of days >= 0, got {older_than_days}")
        if status is not None and status not in FINAL_JOB_STATES:
            raise InvalidInput(f"--status must be one of {', '.join(sorted(FINAL_JOB_STATES))}")
        removed = []
        for job_id, known in self.state.finished_before(now_ms() - older_than_days * 86_400_000, status):
            self.state.delete_job(job_id)
            self.telemetry.forget_job(job_id)
            removed += [job_id] if known else []
        return removed

    def sweep_copies(self) -> list[str]:
        """Drop copies of derived bars that their jobs' settles left behind
        (``engine/bars.py``); the job ids whose copies were dropped."""
        from .engine import bars

        self._ready()
        return bars.sweep(self.store, self.state)

    def label_sets(self, instrument: str | None = None, granularity: str | None = None,
                   source: str | None = None) -> list:
        """Computed label sets (``export.LabelSet``) with rows, per series (of ``source``)."""
        from .storage import export as export_mod

        self._ready()
        inst = parse_instrument(instrument) if instrument else None
        gran = parse_granularity(granularity) if granularity else None
        return [s for s in export_mod.sets_of(self.store, source=self.source_name(source))
                if inst in (None, s.series[0]) and gran in (None, s.series[1])]

    def export_parts(self, instrument: str | list[str], granularity: str | list[str],
                     labels: list[str] | None = None, params: dict | None = None,
                     start: Any = None, end: Any = None, set_id: str | None = None,
                     with_candles: bool = False, with_t1: bool = False, source: str | None = None):
        """A label set as it is exported (``export.parts``): ``export_file``
        writes it, and the store holder streams it to a CLI in another
        process (``serve/holder.py``).  ``with_t1``: each row's event end
        ``t1`` after ``ts``; ``source``: the labels computed from that source."""
        from .storage import export as export_mod

        if source:
            self._ready()  # the source is looked up before the request is checked
        return export_mod.parts(self.store, instrument, granularity, labels, params, start, end,
                                set_id, with_candles, with_t1, ready=self._ready,
                                source=self.source_name(source))

    def export(self, instrument: str | list[str], granularity: str | list[str],
               labels: list[str] | None = None,
               params: dict | None = None, start: Any = None, end: Any = None,
               set_id: str | None = None, with_candles: bool = False,
               source: str | None = None) -> pa.Table:
        """A computed label set as one Arrow table, ``ts`` in int64 ms as
        ``compute_labels`` returns it (files get a UTC timestamp); the
        provenance is in the schema metadata.  ``export_file`` streams large
        sets to disk instead."""
        parts, meta, _ = self.export_parts(instrument, granularity, labels, params, start, end,
                                            set_id, with_candles, source=source)
        table = pa.concat_tables(list(parts))
        table = table.set_column(table.column_names.index("ts"), "ts", table.column("ts").cast(pa.int64()))
        return table.replace_schema_metadata(meta)

    def export_file(self, path: str | Path, instrument: str | list[str], granularity: str | list[str],
                    labels: list[str] | None = None, params: dict | None = None,
                    start: Any = None, end: Any = None, set_id: str | None = None,
                    with_candles: bool = False, with_t1: bool = False,
                    source: str | None = None) -> tuple[int, int, str]:
        """Stream a label set to ``path`` (.parquet or .csv); (rows, columns, set id)."""
        from .storage import export as export_mod

        parts, meta, chosen = self.export_parts(instrument, granularity, labels, params, start,
                                                 end, set_id, with_candles, with_t1, source=source)
        rows, cols = export_mod.write(path, parts, meta)
        return rows, cols, chosen.set_id


def _selection(instrument: str | list[str] | None, granularity: str | list[str] | None
               ) -> tuple[set[str] | None, set[str] | None]:
    """The instruments and granularities a command names (None: all)."""
    insts = {parse_instrument(i) for i in set(parse_names(instrument, "instrument")) - {ALL}}
    grans = {parse_granularity(g) for g in parse_names(granularity, "granularity")}
    return insts or None, grans or None
