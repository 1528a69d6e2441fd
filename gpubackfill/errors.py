"""Exception hierarchy.

Every error a user can cause is an ``InvalidInput`` (also a ``ValueError``,
so plain Python callers can catch the familiar type)::

    GpubackfillError
     └── InvalidInput (ValueError)
          ├── InvalidCandles      malformed candle data; names the first bad row
          ├── InvalidLabelSpec    unknown label or parameter, bad parameter value
          ├── BackendUnavailable  a compute backend that cannot run here
          ├── JobNotFound         no job with that id
          └── InvalidTransition   e.g. resuming a job that is not paused
     └── DependencyError          ClickHouse or Redis unreachable or failing
"""

from __future__ import annotations


class GpubackfillError(Exception):
    """Base class of every error raised by gpubackfill."""


class InvalidInput(GpubackfillError, ValueError):
    """The caller asked for something that cannot be done as given."""


class InvalidCandles(InvalidInput):
    """Candle data breaks the series rules (order, OHLC consistency, values)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


class InvalidLabelSpec(InvalidInput):
    """Unknown label, unknown parameter, or a parameter value out of range."""


class BackendUnavailable(InvalidInput):
    """The requested compute backend cannot run in this environment."""


class DependencyError(GpubackfillError):
    """ClickHouse or Redis cannot be reached or refused the request."""


class JobNotFound(InvalidInput):
    """No job with that id."""


class InvalidTransition(InvalidInput):
    """The job or chunk is not in a state that allows the request."""
