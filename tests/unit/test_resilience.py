"""Error categories, retry policies and circuit breakers (resilience.py)."""

from __future__ import annotations

import errno
import time

import pybreaker
import pytest

from gpubackfill.config import ConfigError, Settings
from gpubackfill.errors import BreakerOpen, DependencyError, InvalidCandles, PersistentError, ResourceError
from gpubackfill.storage.resilience import POLICIES, BreakerBoard, classify, is_outage, retrying


@pytest.mark.parametrize("exc, category", [
    (MemoryError(), "resource"),
    (OSError(errno.ENOSPC, "No space left on device"), "resource"),
    (PermissionError(errno.EACCES, "denied"), "persistent"),
    (TimeoutError("timed out"), "transient"),
    (ConnectionResetError(), "transient"),
    (InvalidCandles("row 3: high < low"), "data"),
    (ResourceError("disk"), "resource"),
    (PersistentError("schema"), "persistent"),
    (DependencyError("cannot reach Redis at unix:///x: Connection refused", "redis"), "dependency"),
    (DependencyError("ClickHouse at http://h:8123 failed: Code: 516. Authentication failed"), "persistent"),
    (DependencyError("ClickHouse at http://h:8123 failed: Code: 60. Unknown table x"), "persistent"),
    (DependencyError("ClickHouse at chdb:///d failed: Code: 241. Memory limit exceeded"), "resource"),
    (DependencyError("ClickHouse at http://h failed: Read timed out. (read timeout=30)"), "transient"),
    (RuntimeError("a bug in a kernel"), "transient"),
])
def test_classify_maps_errors_to_the_five_categories(exc, category):
    assert classify(exc) == category


def test_policies_follow_the_spec_table():
    assert (POLICIES["transient"].attempts, POLICIES["transient"].backoff) == (5, "exponential")
    assert (POLICIES["resource"].attempts, POLICIES["resource"].backoff) == (3, "linear")
    assert (POLICIES["dependency"].attempts, POLICIES["dependency"].backoff) == (5, "jittered")
    assert POLICIES["data"].attempts == POLICIES["persistent"].attempts == 1
    assert not POLICIES["dependency"].dead_letter


def _failing(times: int, exc: BaseException):
    calls = []

    def fn():
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise exc
        return "ok"

    return fn, calls


@pytest.mark.parametrize("exc, attempts", [
    (TimeoutError("t"), 5), (MemoryError(), 3), (DependencyError("down"), 5),
    (InvalidCandles("bad"), 1), (PersistentError("perm"), 1),
])
def test_each_category_gets_its_number_of_attempts(exc, attempts):
    fn, calls = _failing(100, exc)
    seen = []
    with pytest.raises(type(exc)):
        retrying(fn, 0.001, on_retry=lambda cat, e, n: seen.append((cat, n)))
    assert len(calls) == attempts
    assert [n for _, n in seen] == list(range(1, attempts))
    assert all(cat == classify(exc) for cat, _ in seen)


def test_retrying_returns_once_the_error_passes():
    fn, calls = _failing(2, TimeoutError("t"))
    assert retrying(fn, 0.001) == "ok" and len(calls) == 3


def test_linear_backoff_grows_by_the_base():
    fn, calls = _failing(2, MemoryError())
    retrying(fn, 0.05)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1


def test_give_up_stops_retries_early():
    fn, calls = _failing(100, MemoryError())
    with pytest.raises(MemoryError):
        retrying(fn, 0.001, give_up=lambda e: isinstance(e, MemoryError))
    assert len(calls) == 1


def test_breaker_opens_after_outages_only_and_recovers():
    board = BreakerBoard()
    published = []
    board.publisher = lambda name, d: published.append((name, d["state"]))
    cb = board.get("clickhouse", "http://x", failures=3, reset_seconds=0.3)

    def outage():
        raise DependencyError("ClickHouse at http://x failed: Connection refused")

    def refused():
        raise DependencyError("ClickHouse at http://x failed: Code: 62. Syntax error")

    for _ in range(5):  # a server that answers "no" is up: never opens the breaker
        with pytest.raises(DependencyError):
            board.call(cb, refused)
    assert cb.current_state == "closed"
    for _ in range(2):
        with pytest.raises(DependencyError):
            board.call(cb, outage)
    assert cb.current_state == "closed"
    with pytest.raises(DependencyError) as info:
        board.call(cb, outage)  # the third outage trips it; the real error still surfaces
    assert not isinstance(info.value, BreakerOpen) and cb.current_state == "open"
    with pytest.raises(BreakerOpen) as info:
        board.call(cb, lambda: "never called")
    assert 0 < info.value.retry_after <= 0.3 and is_outage(info.value)
    assert board.snapshot()["clickhouse"]["state"] == "open"
    time.sleep(0.35)
    assert board.call(cb, lambda: "back") == "back"  # half-open trial succeeds
    assert cb.current_state == "closed"
    assert ("clickhouse", "open") in published and published[-1] == ("clickhouse", "closed")


def test_redis_errors_do_not_trip_the_clickhouse_breaker():
    board = BreakerBoard()
    cb = board.get("clickhouse", "chdb://x", failures=1, reset_seconds=10)

    def redis_down():
        raise DependencyError("cannot reach Redis at unix:///s: refused", "redis")

    for _ in range(3):
        with pytest.raises(DependencyError):
            board.call(cb, redis_down)
    assert cb.current_state == "closed"
    assert isinstance(cb, pybreaker.CircuitBreaker)


def test_reliability_settings_from_env():
    s = Settings.from_env({"BATCH_MEMORY_LIMIT": "1.5GB", "GPUBACKFILL_BREAKER_REDIS_FAILURES": "2",
                           "GPUBACKFILL_BREAKER_CLICKHOUSE_RESET_SECONDS": "5",
                           "GPUBACKFILL_RETRY_BASE_SECONDS": "0.5"}, dotenv=False)
    assert s.memory_limit_bytes == 1_500_000_000 and s.breaker_redis_failures == 2
    assert s.breaker_clickhouse_reset_seconds == 5.0 and s.retry_base_seconds == 0.5
    mib = Settings.from_env({"BATCH_MEMORY_LIMIT": "512MiB"}, dotenv=False)
    assert mib.memory_limit_bytes == 512 * 2**20
    for bad in ("lots", "-1GB", "2XB"):
        with pytest.raises(ConfigError, match="BATCH_MEMORY_LIMIT"):
            Settings.from_env({"BATCH_MEMORY_LIMIT": bad}, dotenv=False)
    with pytest.raises(ConfigError, match="GPUBACKFILL_RETRY_BASE_SECONDS"):
        Settings.from_env({"GPUBACKFILL_RETRY_BASE_SECONDS": "soon"}, dotenv=False)
