"""gpubackfill: batch computation of machine-learning labels over OHLC candles."""

from .allocator import keep_freed_memory
from .compute import compute_labels
from .errors import (
    BackendUnavailable,
    GpubackfillError,
    InvalidCandles,
    InvalidInput,
    InvalidLabelSpec,
)
from .labels import REGISTRY as LABELS, label_set_id, resolve as resolve_labels

__version__ = "0.1.0"

__all__ = [
    "LABELS", "BackendUnavailable", "GpubackfillError", "InvalidCandles", "InvalidInput",
    "InvalidLabelSpec", "compute_labels", "keep_freed_memory", "label_set_id", "resolve_labels",
]
