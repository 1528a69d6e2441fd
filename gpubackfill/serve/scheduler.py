"""The service's scheduler: runs queued jobs by priority, a few at a time.

Queued jobs live in Redis (from ``start --detach`` or ``POST /jobs``), so a
restarted service finds them again.  Each pass (every
``GPUBACKFILL_SCHEDULER_INTERVAL`` seconds):

1. forgets the job threads that ended;
2. picks (``pick``, a pure function) the queued jobs to start: high before
   normal before low, oldest first within a priority, up to
   ``GPUBACKFILL_MAX_CONCURRENT_JOBS`` at once.  Jobs this scheduler (or a
   previous incarnation of it) started and that were left ``interrupted``
   or ``running`` without a live driver are picked up again the same way,
   and so are finished jobs whose dead letters were retried (``run_again``);
3. runs each picked job with ``BackfillService.execute`` in a thread of
   this process (the embedded chDB allows one process per data folder).
   ``execute`` takes the job's driver lock in Redis, so two service
   replicas never run the same job;
4. evaluates the alerts.

A paused job keeps its slot (its driver waits for resume or cancel).  On
shutdown, running jobs are interrupted between chunks and resumed by the
next start.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.lease import dead_local_owner
from ..errors import GpubackfillError, InvalidTransition
from ..jobs.spec import JobSpec

if TYPE_CHECKING:
    from ..service import BackfillService
    from .alerts import Alerter

log = logging.getLogger("gpubackfill.scheduler")

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
# Finished jobs that ``execute`` runs again (their failed chunks re-queued).
RUN_AGAIN_STATES = ("completed_with_errors", "failed")


@dataclass(frozen=True)
class Candidate:
    job_id: str
    priority: str
    created: int          # ms since the epoch


def pick(candidates: list[Candidate], running: int, limit: int) -> list[str]:
    """The jobs to start now: by priority, then creation time (then id, for
    a total order), as many as there are free slots."""
    free = max(0, limit - running)
    order = sorted(candidates, key=lambda c: (PRIORITY_RANK.get(c.priority, 1), c.created, c.job_id))
    return [c.job_id for c in order[:free]]


class Scheduler:
    def __init__(self, service: BackfillService, max_jobs: int | None = None,
                 interval: float | None = None, alerter: Alerter | None = None):
        self.service = service
        self.max_jobs = max_jobs or service.settings.max_concurrent_jobs
        self.interval = interval or service.settings.scheduler_interval
        self.alerter = alerter
        self._threads: dict[str, threading.Thread] = {}
        self._specs: dict[str, JobSpec] = {}  # the jobs of the live threads, for overlaps
        self._stop = threading.Event()       # handed to execute: interrupts jobs
        self._loop: threading.Thread | None = None
        self.last_error: str | None = None
        self.started_order: list[str] = []   # job ids in the order this scheduler started them
        self._again: set[str] = set()        # finished jobs asked to run again (``run_again``)

    # -- one pass ------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        out = []
        for job_id in self.service.state.job_ids():
            if job_id in self._threads:
                continue
            try:
                job = self.service.state.job(job_id)
            except GpubackfillError:
                continue
            status = job["status"]
            ours = job.get("scheduled") == "1"
            orphan = status in ("running", "interrupted") and ours and not self._driven(job_id)
            again = job_id in self._again and status in RUN_AGAIN_STATES
            if job_id in self._again and not again:
                self._again.discard(job_id)   # run meanwhile by someone else
            if status == "queued" or orphan or again:
                out.append(Candidate(job_id, job.get("priority", "normal"), int(job["created"])))
        return out

    def _driven(self, job_id: str) -> bool:
        """A live driver holds the job.  A lock whose owner is a process of
        this host that has died does not count: ``execute`` takes such a job
        over at once, and a restarted service should not wait out the lease."""
        owner = self.service.state.driver_owner(job_id)
        return owner is not None and not dead_local_owner(owner)

    def tick(self) -> list[str]:
        """One scheduling pass; returns the jobs started."""
        for job_id, t in list(self._threads.items()):
            if not t.is_alive():
                del self._threads[job_id]
                self._specs.pop(job_id, None)
        started = []
        if not self._stop.is_set():
            free = self.max_jobs - len(self._threads)
            ours = [self._specs[j] for j in self._threads if j in self._specs]
            candidates = self.candidates()
            for job_id in pick(candidates, 0, len(candidates)):
                if free <= 0:
                    break
                # A job that would write where another is writing waits for
                # a later pass: one running elsewhere (Redis says), or one
                # of ours, launched but perhaps not running yet.
                try:
                    spec = JobSpec.from_record(self.service.state.job(job_id))
                    if any(spec.overlaps(other) for other in ours) or self.service.writer_conflict(job_id, spec):
                        continue
                except GpubackfillError:
                    continue
                self._specs[job_id] = spec
                ours.append(spec)
                self._launch(job_id)
                started.append(job_id)
                free -= 1
        if self.alerter is not None:
            self.alerter.check(self.service.metrics())
        return started

    def run_again(self, job_id: str) -> bool:
        """Run a finished job again, picked like a queued one at the next
        pass: its dead letters were retried, and ``execute`` takes it from
        completed_with_errors or failed back to running (as ``dlq retry``
        does from the CLI).  False for a job in another state."""
        if self.service.state.job(job_id)["status"] not in RUN_AGAIN_STATES:
            return False
        self._again.add(job_id)
        return True

    def _launch(self, job_id: str) -> None:
        self._again.discard(job_id)
        self.service.state.set_fields(job_id, scheduled="1")
        t = threading.Thread(target=self._run, args=(job_id,), name=f"job-{job_id}", daemon=True)
        self._threads[job_id] = t
        self.started_order.append(job_id)
        t.start()

    def _run(self, job_id: str) -> None:
        try:
            self.service.execute(job_id, stop=self._stop)
        except InvalidTransition as exc:  # another driver, or the job changed meanwhile
            log.info("scheduler skipped job %s: %s", job_id, exc, extra={"job_id": job_id})
        except Exception as exc:
            log.exception("job %s stopped with an error: %s", job_id, exc, extra={"job_id": job_id})

    # -- the loop ------------------------------------------------------------

    def start(self) -> None:
        if self._loop is not None and self._loop.is_alive():
            return
        self._loop = threading.Thread(target=self._forever, name="gpubackfill-scheduler", daemon=True)
        self._loop.start()

    def _forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except Exception as exc:  # Redis down: keep trying, /health reports it
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("scheduler pass failed: %s", self.last_error)
            self._stop.wait(self.interval)

    @property
    def alive(self) -> bool:
        return self._loop is not None and self._loop.is_alive()

    def running(self) -> list[str]:
        return [j for j, t in self._threads.items() if t.is_alive()]

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop picking jobs; interrupt running ones between chunks."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout)
        for t in list(self._threads.values()):
            t.join(timeout)
