"""The loop that runs a job: it carries out ``DriverMachine``'s instructions.

Redis is the record: the driver claims chunks, submits them to the Dask
cluster and collects their futures.  Each chunk's worker records its own
result (``chunk.run_chunk``), so a driver that dies loses nothing; another
process takes the job over (``service.execute``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import tenacity

from ..common import logs
from ..config import Settings
from ..errors import DependencyError, InvalidInput
from ..jobs.machine import (
    Abandon,
    Claim,
    Collect,
    DriverMachine,
    Finish,
    Instruction,
    ReturnExpired,
    Seen,
    Transition,
    Wait,
)
from ..jobs.result import ChunkResult
from ..storage.redis import RedisState
from .chunk import run_chunks
from .task import ChunkTask
from .watchdog import chunk_deadline


class Driver:
    """Runs one job on one cluster until it settles, stops or is paused by a stop."""

    def __init__(self, state: RedisState, settings: Settings, job_id: str, owner: str,
                 lease_ms: int, base: dict[str, Any], series: list[tuple[str, str]], cluster,
                 workers: int, stop: threading.Event | None = None,
                 flush: Callable[[], Any] | None = None):
        self.state, self.settings = state, settings
        self.job_id, self.owner, self.lease_ms = job_id, owner, lease_ms
        self.base, self.cluster, self.workers = base, cluster, workers
        self.series = [(s[0], s[1]) for s in series]
        self.stop = stop or threading.Event()
        self.flush = flush  # inserts the manifest rows the chunks recorded
        self.machine = DriverMachine(workers, settings.shutdown_timeout)
        # Each Dask future runs one or more chunks (chunk.run_chunks):
        # future -> [(chunk index, lease token), ...] in the order they run.
        self.in_flight: dict[Any, list[tuple[int, int]]] = {}
        # The futures in flight whose tasks have not been seen to start:
        # they may wait in Dask's queue (jobs sharing a cluster, more
        # workers asked than it has threads) longer than a lease lives, so
        # the driver renews their chunks' leases each upkeep.  Once a task
        # starts, its running chunk's heartbeat keeps the leases of its
        # chunks (lease.Heartbeat), so that a worker that dies or hangs
        # mid-chunk still loses them; a driver that dies renews nothing.
        self.waiting: set[Any] = set()
        self.last_upkeep = time.monotonic()
        # Futures whose chunk was taken back (deadline or lease) while their
        # thread still runs: each holds a worker slot until it returns.
        self.stuck: dict[Any, list[int]] = {}
        self.timeout_s = self._chunk_timeout()
        self.per_task: int | None = None  # most chunks in a task (most_per_task), on the first claim
        # Set by Dask (on its callback thread) whenever a future settles: the
        # driver sleeps on it instead of polling its futures.
        self.settled = threading.Event()
        # Redis (or ClickHouse) away for the driver itself: back off, do not spin.
        self._backoff = tenacity.wait_exponential(multiplier=settings.retry_base_seconds,
                                                  min=settings.retry_base_seconds, max=30.0)

    def run(self, progress: Callable[[], None] | None = None) -> str:
        outage = 0
        while True:
            try:
                status = self._turn()
                outage = 0
            except DriverLost as exc:
                # Not abandon(): the chunks in flight keep their leases and
                # record themselves; the new driver sees them settle.
                logs.log.warning("%s", exc, extra={"job_id": self.job_id})
                self.in_flight.clear()
                self.waiting.clear()
                return self.state.status(self.job_id)
            except DependencyError as exc:
                # Running chunks keep going and retry their own records.
                outage += 1
                if self.stop.is_set():
                    raise
                wait = self._backoff(cast(tenacity.RetryCallState, _Attempt(outage)))
                self.stop.wait(min(wait, getattr(exc, "retry_after", 0) or wait))
                continue
            if status is not None:
                return status
            if progress:
                progress()

    def _turn(self) -> str | None:
        seen = Seen(now=time.monotonic(), status=self.state.status(self.job_id),
                    in_flight=len(self.in_flight), stop=self.stop.is_set(),
                    wedged=tuple(self.wedged()) if self.stuck else ())
        pending: list[Instruction] = self.machine.step(seen)
        while pending:
            done = self._do(pending.pop(0))
            if isinstance(done, str):
                return done
            pending[:0] = done
        self._upkeep()
        return None

    def _do(self, ins: Instruction) -> list[Instruction] | str:
        """Carry out one instruction; follow-up instructions, or the final status."""
        if isinstance(ins, Claim):
            got, empty = self._claim(ins.n)
            return self.machine.claimed(got, empty, len(self.in_flight))
        if isinstance(ins, Collect):
            out: list[Instruction] = []
            for fut in _wait_some(list(self.in_flight), ins.seconds, self.settled):
                out += self._collect(fut)
            return out
        if isinstance(ins, Wait):
            self.stop.wait(ins.seconds)  # a signal cuts the wait short
            return []
        if isinstance(ins, Transition):
            status = self.state.status(self.job_id)
            if ins.event == "fail" and status not in ("running", "paused"):
                return []
            if ins.event == "interrupt" and status != "running":
                return []
            status = self.state.transition(self.job_id, ins.event, ins.note)
            logs.job_event(self.job_id, status, ins.event, ins.note)
            return []
        if isinstance(ins, ReturnExpired):
            n = self.state.expire_leases(self.job_id)
            return self.machine.returned(n, self.state.settle(self.job_id))
        if isinstance(ins, Abandon):
            self.abandon(ins.why)
            return self.state.status(self.job_id)
        if isinstance(ins, Finish):
            return ins.status
        raise TypeError(f"unknown instruction {ins!r}")

    def _claim(self, n: int) -> tuple[int, bool]:
        """Submit up to ``n`` Dask tasks, each of one chunk or of several
        small ones (``Settings.task_candles``); (tasks submitted, queue empty)."""
        got, refused = 0, ""
        if self.per_task is None:
            self.per_task = most_per_task(int(self.state.job(self.job_id).get("chunks_total") or 0),
                                          self.workers)
        budget = self.settings.task_candles
        while got < n and not refused:
            batch: list[ChunkTask] = []
            want = 1
            while not refused and len(batch) < self.per_task and sum(t.rows for t in batch) < budget:
                # The first chunk alone, then as many more as its size says
                # fill the task, in one round trip (the rest one by one).
                for claimed in self.state.claim_many(self.job_id, self.owner, self.lease_ms, want):
                    if isinstance(claimed, str):
                        refused = claimed  # 'empty', or the job's status: it no longer runs
                        break
                    idx, token, segments = claimed
                    batch.append(ChunkTask(index=idx, token=token, segments=segments,
                                           names={s.series: self.series[s.series] for s in segments},
                                           timeout_s=self.timeout_s, **self.base))
                if len(batch) == 1 and batch[0].rows:
                    want = max(1, min(self.per_task - 1, -(-(budget - batch[0].rows) // batch[0].rows)))
                else:
                    want = 1
            if not batch:
                break
            first = batch[0]
            fut = self.cluster.client.submit(run_chunks, self.settings, tuple(batch), pure=False,
                                             key=f"chunk-{self.job_id}-{first.index}-{first.token}"
                                                 + (f"+{len(batch) - 1}" if len(batch) > 1 else ""))
            self.in_flight[fut] = [(t.index, t.token) for t in batch]
            self.waiting.add(fut)
            fut.add_done_callback(self._on_settled)
            got += 1
        return got, refused == "empty"

    def _on_settled(self, _fut) -> None:
        self.settled.set()

    def _collect(self, fut) -> list[Instruction]:
        chunks = self.in_flight.pop(fut)
        # A task that returned without starting its chunks (Redis away at
        # its start) leaves their leases to run out: not ours to keep.
        self.waiting.discard(fut)
        if fut.status == "error":  # the task never reported: its worker died or it crashed
            exc = fut.exception()
            why = f"worker lost: {type(exc).__name__}: {exc}"
            for idx, token in chunks:  # those recorded already keep their record (stale token)
                if self.state.fail(self.job_id, idx, token, why, self.base["max_attempts"], retryable=True,
                                   category="resource", detail={"digest": "worker-lost"})[0] != "stale":
                    logs.chunk_failed(self.job_id, idx, why, True)
            self.state.note(self.job_id, "worker_error", f"chunks {[i for i, _ in chunks]}: {exc}")
            return []
        if fut.status == "cancelled":
            return []
        out: list[Instruction] = []
        results: list[ChunkResult] = fut.result()
        for result in results:
            if result.failed:
                logs.chunk_failed(self.job_id, result.index, result.error, result.kind == "retry",
                                  category=result.category)
            out += self.machine.outcome(result, time.monotonic())
        return out

    def _upkeep(self) -> None:
        # Often enough to see a chunk taken back by its deadline soon after,
        # and never less often than the driver lock needs renewing.
        since = time.monotonic() - self.last_upkeep
        if since > min(self.lease_ms / 3000, 5.0):
            if not self.state.renew_driver(self.job_id, self.owner, self.lease_ms):
                self._relock(since)
            self._keep_waiting()
            self.state.expire_leases(self.job_id)
            self._forget_expired()
            if self.flush is not None:
                self.flush()
            self.timeout_s = self._chunk_timeout()
            self.last_upkeep = time.monotonic()

    def _keep_waiting(self) -> None:
        """Renew the leases of the chunks of the tasks not yet started, in
        one call (at most ``workers`` tasks of ``MAX_CHUNKS_PER_TASK``
        chunks); stop keeping a task once one of its chunks started or is no
        longer ours (done, or taken back)."""
        futures = [f for f in self.waiting if f in self.in_flight]
        owner = [f for f in futures for _ in self.in_flight[f]]
        chunks = [c for f in futures for c in self.in_flight[f]]
        self.waiting = set(futures)
        if chunks:
            self.waiting -= {owner[k] for k in self.state.keep_waiting(self.job_id, chunks, self.lease_ms)}

    def _relock(self, since: float) -> None:
        """The driver lock ran out before it was renewed (this process was held
        up longer than the lock lives: a long compile, an overloaded host).
        Take it again unless another process has it; then that process
        drives the job and this one stops, leaving its chunks to finish."""
        other = self.state.acquire_driver(self.job_id, self.owner, self.lease_ms)
        why = f"driver lock of {self.owner} expired ({since:.1f}s since its last renewal)"
        if other is None:
            logs.log.warning("%s; taken again", why, extra={"job_id": self.job_id})
            self.state.note(self.job_id, "driver_relock", why)
            return
        self.state.note(self.job_id, "driver_lost", f"{why}; {other} drives the job now")
        raise DriverLost(f"job {self.job_id} is driven by {other} now ({why})")

    def _chunk_timeout(self) -> float:
        s = self.settings
        if s.chunk_timeout > 0:
            return s.chunk_timeout
        return chunk_deadline(0, s.chunk_timeout_floor,
                              [d for d, _ in self.state.durations(self.job_id)])

    def _forget_expired(self) -> None:
        """Stop waiting for chunks that were taken back (past their deadline,
        or their lease ran out: a hung or lost worker).  They are queued
        again, and the stale run's write is fenced off."""
        for fut in [f for f in self.stuck if f.done()]:
            del self.stuck[fut]
        if not any(not f.done() for f in self.in_flight):
            return
        leases = self.state.leases(self.job_id)
        for fut, chunks in list(self.in_flight.items()):
            # A task holds no lease any more once its running chunk was taken
            # back and those waiting behind it were returned (``_give_back``)
            # or ran out with it (its heartbeat kept them).
            if not fut.done() and all(leases.get(idx) != token for idx, token in chunks):
                # Not cancelled: a running task cannot be stopped anyway, and
                # its future is how we see the slot come free again.
                self.in_flight.pop(fut)
                self.stuck[fut] = [idx for idx, _ in chunks]
                self.state.note(self.job_id, "lease_expired", ", ".join(
                    f"chunk {idx} (token {token})" for idx, token in chunks))

    def wedged(self) -> list[int]:
        """The chunks that hold every worker slot, each past its deadline
        and never returned: nothing can run in this cluster any more ([]
        while a slot is free).  A forgotten future may also be one that never
        started, its lease having run out in Dask's queue: only a timeout
        recorded for the chunk shows that it ran (this driver keeps waiting
        chunks' leases, but not while it is held up past a lease period)."""
        if len(self.stuck) < self.workers:
            return []
        errors = self.state.chunk_errors(self.job_id)
        timed_out = [min(i for i in chunks if errors.get(i, "").startswith("timeout:"))
                     for chunks in self.stuck.values()
                     if any(errors.get(i, "").startswith("timeout:") for i in chunks)]
        return sorted(timed_out) if len(timed_out) >= self.workers else []

    def abandon(self, why: str = "driver stopped") -> None:
        """Give running chunks back to the queue (their late writes are fenced)."""
        for fut, chunks in list(self.in_flight.items()):
            fut.cancel()
            for idx, token in chunks:
                try:
                    self.state.release(self.job_id, idx, token)
                except DependencyError:
                    pass  # the lease expires instead
        self.in_flight.clear()
        self.waiting.clear()
        try:
            if self.state.status(self.job_id) == "running":
                self.state.transition(self.job_id, "interrupt", why)
        except (DependencyError, InvalidInput):
            pass


# Chunks per Dask task at most (see Settings.task_candles).
MAX_CHUNKS_PER_TASK = 128


def most_per_task(chunks: int, workers: int) -> int:
    """The most chunks one Dask task takes in a job of ``chunks``: up to
    ``MAX_CHUNKS_PER_TASK``, but few enough that each of ``workers`` gets
    two tasks or more (a job of twenty 10k chunks on two workers is not one
    task on one worker while the other waits)."""
    return max(1, min(MAX_CHUNKS_PER_TASK, chunks // (2 * max(1, workers))))


class DriverLost(Exception):
    """Another process took the job over after this driver's lock ran out."""


class _Attempt:
    """The one attribute of tenacity's RetryCallState a wait strategy reads."""

    def __init__(self, n: int):
        self.attempt_number = n


def _wait_some(futures: list, timeout: float, settled: threading.Event) -> list:
    """Futures finished within ``timeout`` (as soon as one is).

    ``settled`` is set by each future's done-callback (``distributed.wait``
    would need this client to be the process default).  It replaces a poll
    every 5 ms, whose wake-ups took the GIL from the chunks 200 times a
    second: a sampler thread doing as much cost a 10M job ~6% of its time.
    Cleared before the futures are looked at, so a future that settles
    after the look sets it again and the wait returns at once."""
    deadline = time.monotonic() + timeout
    while True:
        settled.clear()
        done = [f for f in futures if f.done()]
        left = deadline - time.monotonic()
        if done or left <= 0:
            return done
        settled.wait(left)
