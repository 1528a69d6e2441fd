"""The failure policy: what a chunk's error becomes (an outage put back in
the queue, a split, a pack run again series by series, a retry or a
dead letter), and the retries' record."""

from __future__ import annotations

import hashlib
import traceback
from pathlib import Path
from typing import Any

import psutil

from ..config import BYTES_PER_CANDLE, Settings
from ..errors import BreakerOpen, DependencyError, InvalidCandles
from ..jobs.result import ChunkResult
from ..storage.clickhouse_store import Store
from ..storage.redis import RedisState
from ..storage.resilience import classify, is_outage
from .task import ChunkTask


def log_retry(state: RedisState, task: ChunkTask, category: str, exc: BaseException, attempt: int) -> None:
    try:
        state.count(f"retries:{category}")
        state.note(task.job_id, "retry", f"chunk {task.index} attempt {attempt} ({category}): {exc}"[:500])
    except DependencyError:
        pass  # the retry itself matters more than its record


def record_failure(store: Store, state: RedisState, settings: Settings, task: ChunkTask,
                    exc: BaseException, retries: int) -> ChunkResult:
    category = classify(exc)
    message = f"{category}: {type(exc).__name__}: {exc}"
    if is_outage(exc):
        # ClickHouse (or Redis) is down: not the chunk's fault.  It goes back
        # to the queue untouched and the driver waits for the breaker.
        state.count(f"errors:{category}")
        state.release(task.job_id, task.index, task.token)
        wait = exc.retry_after if isinstance(exc, BreakerOpen) else settings.retry_base_seconds
        return ChunkResult(task.index, "outage", error=message, category=category, retry_after=wait)
    if splittable(settings, task, exc):
        split = split_chunk(store, state, task, "out of memory")
        if split is not None:
            return split
    if len(task.segments) > 1 and category in ("data", "persistent"):
        # One bad series must not take the series packed with it down: every
        # series runs again as its own chunk, and only the bad one fails.
        added = state.unpack(task.job_id, task.index, task.token)
        if added:
            state.note(task.job_id, "unpack", f"chunk {task.index} ({len(task.segments)} series) "
                                              f"run again one series per chunk: {message}"[:500])
            return ChunkResult(task.index, "split", error=message, category=category)
    detail: dict[str, Any] = {"digest": _digest(exc), "retries": retries}
    if isinstance(exc, InvalidCandles) and exc.rows:
        detail["rows"] = exc.rows
    if len(task.segments) > 1 and isinstance(exc, InvalidCandles):
        detail["series_names"] = [list(task.names[s.series]) for s in task.segments]
    status, _ = state.fail(task.job_id, task.index, task.token,
                           message + "\n" + "".join(traceback.format_exception(exc, limit=8)),
                           1, retryable=False, category=category, detail=detail)
    return ChunkResult(task.index, "failed" if status == "failed" else "retry", error=message,
                       category=category, fail_job=category == "persistent")


def _digest(exc: BaseException) -> str:
    """A short stable id of where the error came from (same bug, same digest)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "|".join(f"{Path(f.filename).name}:{f.name}" for f in frames[-4:])
    return hashlib.blake2b(f"{type(exc).__name__}|{where}".encode(), digest_size=6).hexdigest()


def over_memory_budget(settings: Settings, task: ChunkTask) -> bool:
    if not settings.memory_limit_bytes or task.rows < 2 * settings.min_chunk_size:
        return False
    rss = psutil.Process().memory_info().rss
    return rss + task.rows * BYTES_PER_CANDLE > settings.memory_limit_bytes


def splittable(settings: Settings, task: ChunkTask, exc: BaseException) -> bool:
    return (classify(exc) == "resource" and len(task.segments) == 1
            and task.rows >= 2 * settings.min_chunk_size)


def split_chunk(store: Store, state: RedisState, task: ChunkTask, why: str) -> ChunkResult | None:
    """Halve a one-series chunk in the plan (at its middle candle); both
    halves go back to the queue.  None when there is nothing to cut (a pack
    of small series, or fewer candles than planned)."""
    if len(task.segments) != 1:
        return None
    seg = task.segments[0]
    runs = store.chunk_starts(task.key(seg), seg.start_ms, seg.end_ms, (seg.rows + 1) // 2)
    if len(runs) < 2:
        return None
    (_, left), (mid, right) = runs[0], runs[1]
    new = state.split(task.job_id, task.index, task.token, mid, left, right + sum(n for _, n in runs[2:]))
    state.note(task.job_id, "split", f"chunk {task.index} ({seg.rows} candles, {why}) -> "
                                     f"{task.index} + {new}")
    return ChunkResult(task.index, "split", error=why, split_into=new)
