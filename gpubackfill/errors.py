"""Exception hierarchy; each class carries the error category that decides
its retry policy (``resilience.POLICIES``) and its metric label.

Every error a user can cause is an ``InvalidInput`` (also a ``ValueError``,
so plain Python callers can catch the familiar type)::

    GpubackfillError
     ├── InvalidInput (ValueError)           data: no retry
     │    ├── InvalidCandles      malformed candle data; names the bad rows
     │    ├── InvalidLabelSpec    unknown label or parameter, bad parameter value
     │    ├── BackendUnavailable  a compute backend that cannot run here
     │    ├── JobNotFound         no job with that id
     │    └── InvalidTransition   e.g. resuming a job that is not paused
     ├── DependencyError                     dependency: retried behind a breaker
     │    └── BreakerOpen         the dependency's circuit breaker is open
     ├── TransientError                      transient: retried, exponential backoff
     ├── ResourceError                       resource: a few retries, smaller chunks
     └── PersistentError                     persistent: the job fails, no retry

Exceptions from elsewhere (a ``MemoryError``, a ClickHouse error code, a
socket timeout) are mapped onto these categories by ``resilience.classify``.
"""

from __future__ import annotations

from typing import Any

CATEGORIES = ("transient", "resource", "dependency", "data", "persistent")


def shown(value: Any) -> str:
    """``repr`` for a message: a numpy scalar shows as the number it holds
    (``0.5``, where numpy 2's repr says ``np.float64(0.5)``).  Tested by
    module name, so a message does not import numpy."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        item = value.item()
        if isinstance(item, (bool, int, float, complex, str, bytes)):
            return repr(item)
    return repr(value)


class GpubackfillError(Exception):
    """Base class of every error raised by gpubackfill."""

    category = "persistent"


class InvalidInput(GpubackfillError, ValueError):
    """The caller asked for something that cannot be done as given."""

    category = "data"


class InvalidCandles(InvalidInput):
    """Candle data breaks the series rules (order, OHLC consistency, values)."""

    def __init__(self, message: str, row: int | None = None, rows: list | None = None):
        super().__init__(message)
        self.row = row
        self.rows = rows or []  # (ts, reason) of the offending rows, when known


class InvalidLabelSpec(InvalidInput):
    """Unknown label, unknown parameter, or a parameter value out of range."""


class BackendUnavailable(InvalidInput):
    """The requested compute backend cannot run in this environment."""


class DependencyError(GpubackfillError):
    """ClickHouse or Redis cannot be reached or refused the request."""

    category = "dependency"

    def __init__(self, message: str, dependency: str = ""):
        super().__init__(message)
        self.dependency = dependency  # "redis", "clickhouse", or "" when not said


class BreakerOpen(DependencyError):
    """A dependency failed often enough that calls to it are suspended."""

    def __init__(self, dependency: str, retry_after: float):
        super().__init__(f"{dependency} keeps failing: its circuit breaker is open for "
                         f"{retry_after:.0f} s more", dependency)
        self.retry_after = retry_after


class TransientError(GpubackfillError):
    """A failure expected to pass by itself (a timeout, a dropped connection)."""

    category = "transient"


class ResourceError(GpubackfillError):
    """Memory or disk ran short."""

    category = "resource"


class PersistentError(GpubackfillError):
    """Configuration, permissions, credentials or schema: retrying cannot help."""

    category = "persistent"


class JobNotFound(InvalidInput):
    """No job with that id."""


class InvalidTransition(InvalidInput):
    """The job or chunk is not in a state that allows the request."""
