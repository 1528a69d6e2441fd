"""Error categories, retry policies and circuit breakers.

``classify`` maps any exception onto one of five categories; ``POLICIES``
says what each category gets (attempts, backoff, whether a chunk may be
retried later); ``retrying``
runs a callable under that policy with tenacity; ``BreakerBoard`` keeps one
pybreaker circuit breaker per dependency and target in this process and
publishes their states to Redis so that ``metrics`` and ``/health`` of
other processes can show them.
"""

from __future__ import annotations

import errno
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
import tenacity

from ..errors import BreakerOpen, DependencyError, GpubackfillError

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    attempts: int      # tries in all, the first included
    backoff: str       # exponential | linear | jittered | none
    dead_letter: bool  # a chunk that exhausts it goes to the dead-letter queue


POLICIES: dict[str, Policy] = {
    "transient": Policy(5, "exponential", True),
    "resource": Policy(3, "linear", True),
    "dependency": Policy(5, "jittered", False),  # waits behind its breaker instead
    "data": Policy(1, "none", True),
    "persistent": Policy(1, "none", True),        # and the job fails
}

# ClickHouse error codes (``Code: N`` in every server and chDB message).
_CH_RESOURCE = {241, 242, 243, 173}          # memory limit, not enough space, cannot allocate
_CH_PERSISTENT = {16, 47, 60, 62, 81, 192, 193, 194, 291, 497, 516}  # schema, syntax, auth, access
_CH_TRANSIENT = {159, 160, 202, 209, 210, 252, 319, 394, 425}          # timeouts, network, load
_CODE = re.compile(r"Code: (\d+)")


def classify(exc: BaseException) -> str:
    """The error category of ``exc`` (one of ``errors.CATEGORIES``)."""
    if isinstance(exc, MemoryError):
        return "resource"
    if isinstance(exc, DependencyError) and not isinstance(exc, BreakerOpen):
        # The adapters wrap whatever the driver raised; the text (and the
        # cause, when kept) say whether retrying can help.
        inner = _from_text(str(exc))
        if inner is None and exc.__cause__ is not None:
            inner = classify(exc.__cause__)
            inner = None if inner == "transient" and not _is_network(exc.__cause__) else inner
        return inner or "dependency"
    if isinstance(exc, GpubackfillError):
        return exc.category
    if isinstance(exc, PermissionError):
        return "persistent"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT):
        return "resource"
    if _is_network(exc):
        return "transient"
    return _from_text(str(exc)) or "transient"  # unknown: worth a few tries, then the DLQ


def _is_network(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout, ConnectionError))


def _from_text(text: str) -> str | None:
    m = _CODE.search(text)
    if m:
        code = int(m.group(1))
        if code in _CH_RESOURCE:
            return "resource"
        if code in _CH_PERSISTENT:
            return "persistent"
        if code in _CH_TRANSIENT:
            return "transient"
    low = text.lower()
    if "authentication" in low or "wrong password" in low or "invalid username-password" in low \
            or "noauth" in low or "permission denied" in low:
        return "persistent"
    if "timed out" in low or "timeout" in low:
        return "transient"
    return None


def is_outage(exc: BaseException) -> bool:
    """A dependency that is down or flaky, as opposed to one that refused the request."""
    return isinstance(exc, DependencyError) and classify(exc) in ("dependency", "transient")


def _outage_of(exc: BaseException, dependency: str) -> bool:
    return is_outage(exc) and getattr(exc, "dependency", "") in ("", dependency)


# -- retries -------------------------------------------------------------------


def _waits(base: float) -> dict[str, Callable]:
    return {
        "transient": tenacity.wait_random_exponential(multiplier=base, max=30 * base),
        "resource": tenacity.wait_incrementing(start=base, increment=base, max=30 * base),
        "dependency": tenacity.wait_exponential_jitter(multiplier=base, max=30 * base, jitter=base),
    }


def retrying(fn: Callable[[], T], base_seconds: float,
             on_retry: Callable[[str, BaseException, int], None] | None = None,
             give_up: Callable[[BaseException], bool] | None = None) -> T:
    """``fn()`` retried as its error's category allows; the last error is raised.

    ``give_up(exc)`` stops early (an open breaker, a chunk better split than
    retried).  ``on_retry(category, exc, attempt)`` runs before each wait.
    """
    waits = _waits(base_seconds)

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, BreakerOpen) or (give_up is not None and give_up(exc)):
            return False
        return POLICIES[classify(exc)].attempts > 1

    def stop(state: tenacity.RetryCallState) -> bool:
        return state.attempt_number >= POLICIES[classify(_failure(state))].attempts

    def wait(state: tenacity.RetryCallState) -> float:
        return waits[classify(_failure(state))](state)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            exc = _failure(state)
            on_retry(classify(exc), exc, state.attempt_number)

    return tenacity.Retrying(retry=tenacity.retry_if_exception(retryable), stop=stop, wait=wait,
                             before_sleep=before_sleep, reraise=True)(fn)


# -- circuit breakers ------------------------------------------------------------

BREAKER_STATES = ("closed", "half_open", "open")
"""Breaker states from best to worst, as published (pybreaker says "half-open");
a state's index is its severity, the value of the ``circuit_breaker_state`` gauge."""


def breaker_severity(state: str) -> int:
    """0 closed, 1 half-open, 2 open; a state not in ``BREAKER_STATES`` counts as closed."""
    state = state.replace("-", "_")
    return BREAKER_STATES.index(state) if state in BREAKER_STATES else 0


class _Breaker(pybreaker.CircuitBreaker):
    """A pybreaker breaker that keeps its state storage at hand: the storage
    says when the breaker opened, which the breaker itself does not."""

    def __init__(self, **kwargs: Any) -> None:
        self.storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        super().__init__(state_storage=self.storage, **kwargs)


class _Publish(pybreaker.CircuitBreakerListener):
    def __init__(self, board: BreakerBoard):
        self.board = board

    def state_change(self, cb, old_state, new_state) -> None:
        # Redis cannot record that Redis is down: its breaker is published
        # when it closes again, and shown from process memory meanwhile.
        # The breaker takes its new state after telling its listeners.
        if cb.name != "redis" or new_state.name == "closed":
            self.board.publish(cb, new_state.name)


class BreakerBoard:
    """This process's breakers, one per (dependency, target)."""

    def __init__(self) -> None:
        self._breakers: dict[tuple[str, str], _Breaker] = {}
        self._lock = threading.Lock()
        self.publisher: Callable[[str, dict], None] | None = None

    def get(self, dependency: str, target: str, failures: int, reset_seconds: float
            ) -> _Breaker:
        key = (dependency, target)
        with self._lock:
            cb = self._breakers.get(key)
            if cb is None:
                # Only outages count: a refused query or bad data says
                # nothing about whether the server is up.
                cb = _Breaker(
                    fail_max=failures, reset_timeout=reset_seconds, name=dependency,
                    exclude=[lambda e: not _outage_of(e, dependency)], listeners=[_Publish(self)],
                    throw_new_error_on_trip=False)
                self._breakers[key] = cb
            return cb

    def call(self, cb: _Breaker, fn: Callable[..., T], *args, **kwargs) -> T:
        # ``calling()``, not ``cb.call``: the latter holds the breaker's lock
        # for the whole call, which would run chunks one at a time.
        try:
            with cb.calling():
                return fn(*args, **kwargs)
        except pybreaker.CircuitBreakerError:
            raise BreakerOpen(str(cb.name), retry_after(cb)) from None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Worst state per dependency in this process."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            items = list(self._breakers.values())
        for cb in items:
            d = describe(cb)
            name = str(cb.name)
            if name not in out or breaker_severity(d["state"]) > breaker_severity(out[name]["state"]):
                out[name] = d
        return out

    def publish(self, cb: _Breaker, state: str) -> None:
        if self.publisher is not None:
            try:
                self.publisher(str(cb.name), {**describe(cb), "state": state.replace("-", "_")})
            except Exception:  # noqa: BLE001 - Redis itself may be the dependency that is down
                pass


def _failure(state: tenacity.RetryCallState) -> BaseException:
    """The exception of a failed attempt (tenacity calls stop, wait and
    before_sleep only after one)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if exc is not None else RuntimeError("no outcome recorded")


def describe(cb: _Breaker) -> dict[str, Any]:
    return {"state": cb.current_state.replace("-", "_"), "failures": cb.fail_counter,
            "changed_ms": int(time.time() * 1000), "retry_after_s": round(retry_after(cb), 3)}


def retry_after(cb: _Breaker) -> float:
    """Seconds until an open breaker lets a trial call through (0 otherwise)."""
    if cb.current_state != "open":
        return 0.0
    opened = cb.storage.opened_at
    if opened is None:
        return float(cb.reset_timeout)
    elapsed = time.time() - opened.timestamp()
    return max(0.0, float(cb.reset_timeout) - elapsed)


BREAKERS = BreakerBoard()

