"""gpubackfill: batch computation of machine-learning labels over OHLC candles.

The public names below are imported on first use (PEP 562), so that a
command that only talks to Redis (``gpubackfill status``, ``pause``) does
not load numba, pandas and pyarrow first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {name: (module, name) for module, names in {
    ".compute": ("compute_labels",),
    ".compute.allocator": ("keep_freed_memory",),
    ".errors": ("BackendUnavailable", "GpubackfillError", "InvalidCandles", "InvalidInput", "InvalidLabelSpec"),
    ".labels": ("label_set_id",),
    ".labels.training": ("event_end", "PurgedKFold", "sequential_bootstrap"),
}.items() for name in names}
_LAZY.update(LABELS=(".labels", "REGISTRY"), resolve_labels=(".labels", "resolve"))

__all__ = [
    "LABELS", "BackendUnavailable", "GpubackfillError", "InvalidCandles", "InvalidInput",
    "InvalidLabelSpec", "compute_labels", "keep_freed_memory", "label_set_id", "resolve_labels",
    "PurgedKFold", "event_end", "sequential_bootstrap",
]

if TYPE_CHECKING:  # pragma: no cover
    from .compute import compute_labels
    from .compute.allocator import keep_freed_memory
    from .errors import BackendUnavailable, GpubackfillError, InvalidCandles, InvalidInput, InvalidLabelSpec
    from .labels import REGISTRY as LABELS
    from .labels import label_set_id
    from .labels import resolve as resolve_labels
    from .labels.training import PurgedKFold, event_end, sequential_bootstrap


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        try:  # a submodule, as the eager package made them attributes
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'gpubackfill' has no attribute {name!r}") from None
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
